-- Pass 2: Neuron Features (seed 004, eq. 1), crop sprites, NF self-response (seed 004, Fig. 4).
ALTER TABLE neurons ADD COLUMN nf_n INTEGER;              -- crops averaged into the NF
ALTER TABLE neurons ADD COLUMN nf_self_response DOUBLE;   -- activation on its own NF / act_max
ALTER TABLE topk ADD COLUMN in_nf BOOLEAN;                -- this crop is part of the NF

CREATE TABLE neuron_features (
    neuron_id INTEGER PRIMARY KEY,
    n_used INTEGER,                        -- N: crops with w_j >= threshold, at most nf_max
    threshold DOUBLE,
    nf_max INTEGER,
    height INTEGER, width INTEGER,         -- native receptive-field size
    nf_png BLOB,                           -- RGBA PNG; alpha 0 where no crop saw the pixel
    std FLOAT[],                           -- per-pixel std over the crops, row-major height x width
    crop_std_mean DOUBLE,                  -- mean of std over seen pixels: low = consistent crops
    sprite_png BLOB,                       -- the top crops side by side, sprite_thumb px each
    sprite_n INTEGER,
    sprite_thumb INTEGER
);
