-- Embeddings: the source of truth for the FAISS indexes under vectors/ (always rebuildable from here).
CREATE TABLE embeddings (
    space VARCHAR NOT NULL,                -- prototype, signature or patch
    model_id INTEGER NOT NULL,
    layer_id INTEGER,                      -- NULL for signature (one space per model)
    neuron_id INTEGER NOT NULL,
    rank INTEGER,                          -- patch: the top-k rank of the crop; NULL for neuron vectors
    vector FLOAT[] NOT NULL                -- L2-normalised
);
COMMENT ON TABLE embeddings IS 'Vectors of the FAISS indexes: prototype (per layer: w-weighted mean feature vector at the argmax unit over the NF images), signature (per model: centred, normalised activations on the probe sample), patch (per layer: feature vector of every top crop).';
COMMENT ON COLUMN embeddings.space IS 'prototype, signature or patch.';
COMMENT ON COLUMN embeddings.model_id IS 'models.id.';
COMMENT ON COLUMN embeddings.layer_id IS 'layers.id; NULL for the signature space (one per model).';
COMMENT ON COLUMN embeddings.neuron_id IS 'neurons.id the vector belongs to.';
COMMENT ON COLUMN embeddings.rank IS 'patch: top-k rank of the crop (topk.rank); NULL otherwise.';
COMMENT ON COLUMN embeddings.vector IS 'L2-normalised vector; inner product = cosine similarity.';
