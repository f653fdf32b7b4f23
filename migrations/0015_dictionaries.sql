-- Learned dictionaries (CRAFT's NMF, Fel et al. 2023; sparse autoencoders): per layer and kind, the fit
-- behind its atoms (indexed as units of kind nmf / sae in neurons and directions), with as many neurons
-- and principal components as the baselines they are compared with.
CREATE TABLE dictionaries (
    layer_id INTEGER NOT NULL,
    kind VARCHAR NOT NULL,
    atoms INTEGER NOT NULL,
    samples INTEGER,
    r2 DOUBLE,
    r2_map DOUBLE,
    l0 DOUBLE,
    clipped DOUBLE,
    r2_neurons DOUBLE,
    r2_pca DOUBLE,
    loss DOUBLE[],
    seconds DOUBLE,
    PRIMARY KEY (layer_id, kind)
);
COMMENT ON TABLE dictionaries IS 'Learned dictionaries of a layer (kind nmf or sae; their atoms are units of that kind) and, for the same number of units, two baselines (the K neurons of largest variance; K principal components): reconstruction R^2 over the same sample of activation vectors.';
COMMENT ON COLUMN dictionaries.layer_id IS 'layers.id.';
COMMENT ON COLUMN dictionaries.kind IS 'nmf (non-negative matrix factorisation, CRAFT) or sae (sparse autoencoder).';
COMMENT ON COLUMN dictionaries.atoms IS 'K: the number of units.';
COMMENT ON COLUMN dictionaries.samples IS 'Activation vectors (image, position pairs) of the sample the fit used.';
COMMENT ON COLUMN dictionaries.r2 IS 'Reconstruction R^2 = 1 - |X - X^|^2 / |X - mean X|^2 over the sample, with the method''s own codes (NMF: its non-negative codes; SAE: its encoder).';
COMMENT ON COLUMN dictionaries.r2_map IS 'R^2 with the codes the indexed maps give (max(map, 0)); the SAE''s equal r2, NMF''s use the least-squares code pinv(W) a.';
COMMENT ON COLUMN dictionaries.l0 IS 'Mean number of atoms with a code above 0 per vector.';
COMMENT ON COLUMN dictionaries.clipped IS 'NMF: share of the sample''s absolute mass below zero, left out (NMF fits max(a, 0)).';
COMMENT ON COLUMN dictionaries.r2_neurons IS 'Baseline: R^2 of the K neurons of largest variance over the same sample, every channel regressed on them by least squares.';
COMMENT ON COLUMN dictionaries.r2_pca IS 'Baseline: R^2 of the K leading principal components of the same sample (the most K linear units can explain).';
COMMENT ON COLUMN dictionaries.loss IS 'SAE: training loss, mean over each 50 steps.';
COMMENT ON COLUMN dictionaries.seconds IS 'Seconds the fit took.';
