-- Pass 1 results: one wide row per neuron, its top-k images, class-conditional means, probe sample.
ALTER TABLE layers ADD COLUMN sparsity DOUBLE;      -- fraction of non-firing positions over the layer
ALTER TABLE layers ADD COLUMN ingest_id INTEGER;

CREATE TABLE neurons (
    id INTEGER PRIMARY KEY,
    key VARCHAR NOT NULL UNIQUE,           -- model/layer/channel
    model_id INTEGER NOT NULL,
    layer_id INTEGER NOT NULL,
    ingest_id INTEGER NOT NULL,
    channel INTEGER NOT NULL,
    rf_h INTEGER, rf_w INTEGER,            -- this channel's receptive field (concat branches differ)
    rf_y0 INTEGER, rf_x0 INTEGER,          -- top-left of unit (0, 0)'s field, input pixels
    n_images INTEGER,                      -- images seen
    act_max DOUBLE,                        -- largest per-image activation (spatial max of the map)
    act_mean DOUBLE,
    act_std DOUBLE,
    sparsity DOUBLE,                       -- fraction of (image, position) where the unit is <= 0
    dead BOOLEAN,                          -- act_max <= 0: never fires
    auc DOUBLE                             -- area under the ranked normalised curve, ranks 1..400, in [0, 1]
);

CREATE TABLE topk (
    neuron_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,                 -- 1 = strongest
    image_id INTEGER NOT NULL,
    activation DOUBLE NOT NULL,
    norm_activation DOUBLE,                -- activation / act_max (w_j of seed 004)
    y INTEGER, x INTEGER,                  -- argmax unit in the layer's map
    box_x0 INTEGER, box_y0 INTEGER, box_x1 INTEGER, box_y1 INTEGER,  -- receptive field in the model input (may cross the border)
    PRIMARY KEY (neuron_id, rank)
);

CREATE TABLE curves (
    neuron_id INTEGER PRIMARY KEY,
    curve FLOAT[]                          -- a_j / a_max for ranks 1..400 (seed 004, Fig. 1)
);

CREATE TABLE class_means (
    neuron_id INTEGER NOT NULL,
    class_id INTEGER NOT NULL,
    mean_activation DOUBLE,
    n_images INTEGER,
    PRIMARY KEY (neuron_id, class_id)
);

CREATE TABLE probe (
    neuron_id INTEGER PRIMARY KEY,
    activations FLOAT[]                    -- per-image activation on the probe images, in probe_images order
);

CREATE TABLE probe_images (
    ingest_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    PRIMARY KEY (ingest_id, rank)
);
