-- Models, layers, image collections and ingest runs.
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL UNIQUE,          -- readable name, first part of every neuron key
    spec VARCHAR NOT NULL,                 -- e.g. torchvision:resnet18, cifar-resnet20
    weights VARCHAR,                       -- weights name or checkpoint path as given
    fingerprint VARCHAR,                   -- sha256 over the state_dict tensors
    num_parameters BIGINT,
    preprocessing JSON,                    -- input size, resize policy, mean, std, channel order, scale
    provenance JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE layers (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL,
    name VARCHAR NOT NULL,                 -- as selected: alias, torch.fx node or module name
    node VARCHAR,                          -- the torch.fx node whose output is recorded
    alias VARCHAR,                         -- conv1..convN, VGG-style conv4_3, ...
    kind VARCHAR,                          -- module or function type, e.g. Conv2d, ReLU, add
    position INTEGER,                      -- forward order
    channels INTEGER,
    map_h INTEGER,
    map_w INTEGER,
    rf_size INTEGER,                       -- largest receptive field over the layer's channels
    rf_stride INTEGER,
    rf_offset INTEGER,                     -- input coordinate of the top-left of unit (0, 0)'s field
    UNIQUE (model_id, name)
);

CREATE TABLE datasets (
    id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    kind VARCHAR,                          -- folder, manifest, flat, torchvision
    fingerprint VARCHAR,
    n_images INTEGER,
    n_problems INTEGER,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE classes (
    id INTEGER PRIMARY KEY,
    dataset_id INTEGER NOT NULL,
    name VARCHAR NOT NULL,
    wnid VARCHAR,                          -- WordNet id when the name is one (n01440764)
    parent_id INTEGER,                     -- hierarchy: NULL at the top
    depth INTEGER,
    is_leaf BOOLEAN
);

CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    dataset_id INTEGER NOT NULL,
    position INTEGER NOT NULL,             -- order within the dataset
    path VARCHAR NOT NULL,
    class_id INTEGER,
    width INTEGER,
    height INTEGER,
    problem VARCHAR                        -- NULL when readable; else why it was skipped
);

CREATE TABLE ingests (
    id INTEGER PRIMARY KEY,
    model_id INTEGER,
    dataset_id INTEGER,
    status VARCHAR NOT NULL,               -- running, done, failed
    parameters JSON,
    package_version VARCHAR,
    model_fingerprint VARCHAR,
    data_fingerprint VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    timings JSON,
    progress DOUBLE
);
