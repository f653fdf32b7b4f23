-- Selectivity indexes (seed 004, section 3) and CSI (Morcos et al. 2018).
ALTER TABLE neurons ADD COLUMN color_index DOUBLE;      -- alpha in [0, 1]
ALTER TABLE neurons ADD COLUMN hue DOUBLE;              -- degrees on the opponent (O1, O2) plane
ALTER TABLE neurons ADD COLUMN hue_name VARCHAR;        -- colour the hue points to
ALTER TABLE neurons ADD COLUMN color_name VARCHAR;      -- dominant chromatic colour name over the NF
ALTER TABLE neurons ADD COLUMN color_share DOUBLE;      -- its weighted share of the NF's pixels
ALTER TABLE neurons ADD COLUMN color_response DOUBLE;   -- 1 - sum a_grey / sum a
ALTER TABLE neurons ADD COLUMN class_index DOUBLE;      -- gamma in [0, 1]
ALTER TABLE neurons ADD COLUMN class_m INTEGER;         -- M: classes covering th of the weight
ALTER TABLE neurons ADD COLUMN top_class_id INTEGER;    -- class with the largest f_c
ALTER TABLE neurons ADD COLUMN top_class_share DOUBLE;  -- its f_c
ALTER TABLE neurons ADD COLUMN csi DOUBLE;              -- (mu_max - mu_rest) / (mu_max + mu_rest)
ALTER TABLE neurons ADD COLUMN csi_class_id INTEGER;    -- class of mu_max

CREATE TABLE neuron_colors (
    neuron_id INTEGER NOT NULL,
    name VARCHAR NOT NULL,                 -- one of the 11 basic colour terms
    share DOUBLE NOT NULL,                 -- weighted share of the NF's pixels
    PRIMARY KEY (neuron_id, name)
);

CREATE TABLE neuron_classes (
    neuron_id INTEGER NOT NULL,
    class_id INTEGER NOT NULL,
    share DOUBLE NOT NULL,                 -- f_c; for ancestors, summed over descendant leaves
    rank INTEGER,                          -- among leaves (or among ancestors), 1 = largest
    in_set BOOLEAN,                        -- one of the M classes of the class index
    is_leaf BOOLEAN,
    PRIMARY KEY (neuron_id, class_id)
);
