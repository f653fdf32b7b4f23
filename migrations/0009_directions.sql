-- Seed 001: bottom images for every unit, directions (SVD, random, user) as units beside the channels.
ALTER TABLE neurons ADD COLUMN kind VARCHAR DEFAULT 'channel';
ALTER TABLE neurons ADD COLUMN unit VARCHAR;
ALTER TABLE neurons ADD COLUMN act_min DOUBLE;
UPDATE neurons SET unit = CAST(channel AS VARCHAR) WHERE unit IS NULL;
COMMENT ON COLUMN neurons.kind IS 'channel (a neuron) or a direction kind: svd, random, user.';
COMMENT ON COLUMN neurons.unit IS 'Channel number, or the direction''s name: the last part of the key.';
COMMENT ON COLUMN neurons.act_min IS 'Directions: lowest value of the map over the dataset.';
COMMENT ON COLUMN neurons.channel IS 'Unit index in the layer''s map: channels 0..C-1, then the layer''s directions (C + j), whose maps are projections.';
ALTER TABLE layers ADD COLUMN pre_activation VARCHAR;
ALTER TABLE layers ADD COLUMN spectrum DOUBLE[];
COMMENT ON COLUMN layers.spectrum IS 'Every singular value of the layer''s standardised image x channel matrix (pooled activations), descending; NULL without directions (seed 001, Fig. 5).';
COMMENT ON COLUMN layers.pre_activation IS 'The node before the ReLU of a rectified layer (select it to see negative values, e.g. for bottom images); NULL otherwise.';

CREATE TABLE bottomk (
    neuron_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,                 -- 1 = lowest
    image_id INTEGER NOT NULL,
    activation DOUBLE NOT NULL,            -- neurons: the spatial maximum; directions: the map's minimum
    y INTEGER, x INTEGER,                  -- neurons: argmax unit; directions: argmin unit
    box_x0 INTEGER, box_y0 INTEGER, box_x1 INTEGER, box_y1 INTEGER,
    PRIMARY KEY (neuron_id, rank)
);
COMMENT ON TABLE bottomk IS 'Bottom images per unit (seed 001): the lowest activations, ties by image id. A neuron''s activation is the spatial maximum (location: its argmax); a direction''s is the minimum of its map (location: the argmin).';
COMMENT ON COLUMN bottomk.neuron_id IS 'neurons.id.';
COMMENT ON COLUMN bottomk.rank IS '1 = lowest.';
COMMENT ON COLUMN bottomk.image_id IS 'images.id.';
COMMENT ON COLUMN bottomk.activation IS 'Neurons: spatial maximum; directions: the map''s minimum.';
COMMENT ON COLUMN bottomk.y IS 'Unit row in the layer''s map (argmax for neurons, argmin for directions).';
COMMENT ON COLUMN bottomk.x IS 'Unit column.';
COMMENT ON COLUMN bottomk.box_x0 IS 'Receptive field in the model input (may cross the border).';
COMMENT ON COLUMN bottomk.box_y0 IS 'Receptive field top.';
COMMENT ON COLUMN bottomk.box_x1 IS 'Receptive field right (exclusive).';
COMMENT ON COLUMN bottomk.box_y1 IS 'Receptive field bottom (exclusive).';

CREATE TABLE directions (
    neuron_id INTEGER PRIMARY KEY,         -- its unit row in neurons (kind svd / random / user)
    layer_id INTEGER NOT NULL,
    kind VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    ordinal INTEGER,
    filter VARCHAR,
    pooling VARCHAR,
    variance DOUBLE,
    explained DOUBLE,
    singular_value DOUBLE,
    n_images INTEGER,
    pooled_var DOUBLE,
    vector FLOAT[],
    weights FLOAT[],
    "offset" DOUBLE
);
COMMENT ON TABLE directions IS 'Directions of a layer (seed 001) indexed as units: u over the standardised channels; the map is weights . a + offset = u . ((a - mu) / sigma).';
COMMENT ON COLUMN directions.neuron_id IS 'neurons.id of the unit (top/bottom images, NF, indexes live there).';
COMMENT ON COLUMN directions.layer_id IS 'layers.id.';
COMMENT ON COLUMN directions.kind IS 'svd, random or user.';
COMMENT ON COLUMN directions.name IS 'svd1.. (by singular value), random1.., or the user''s name.';
COMMENT ON COLUMN directions.ordinal IS 'Index within its kind, from 1 (svd: by decreasing singular value).';
COMMENT ON COLUMN directions.filter IS 'Random: tail (variance past the random_quantile cut-off) or none (baseline).';
COMMENT ON COLUMN directions.pooling IS 'max or mean: how each channel''s map became one value per image.';
COMMENT ON COLUMN directions.variance IS 'u''Ru: variance of the standardised pooled activations along u (an SVD eigenvalue).';
COMMENT ON COLUMN directions.explained IS 'variance / trace R: share of the layer''s standardised variance.';
COMMENT ON COLUMN directions.singular_value IS 'sqrt(n variance): singular value of the standardised n x C matrix along u.';
COMMENT ON COLUMN directions.n_images IS 'Images behind mu, sigma and R.';
COMMENT ON COLUMN directions.pooled_var IS 'Variance over the images of weights . pooled(a) + offset, measured in the directions pass (equals variance for svd/random).';
COMMENT ON COLUMN directions.vector IS 'u: unit vector over the channels, in the standardised space.';
COMMENT ON COLUMN directions.weights IS 'w = u / sigma: weights of the raw channels in the map.';
COMMENT ON COLUMN directions."offset" IS '-w . mu: the map''s constant.';

CREATE OR REPLACE VIEW neuron_view AS
SELECT n.id, n.key, m.name AS model, l.name AS layer, l.alias, l.node, n.channel, n.act_max, n.act_mean, n.act_std,
       n.sparsity, n.dead, n.auc, n.nf_n, n.nf_self_response, n.color_index, n.hue, n.hue_name, n.color_name,
       n.color_share, n.color_response, n.class_index, n.class_m, tc.name AS top_class, n.top_class_share, n.csi,
       cc.name AS csi_class, greatest(n.rf_h, n.rf_w) AS rf_size, n.n_images, n.mean_chroma, tc.wnid AS top_class_wnid,
       n.weak, n.csi_mean, n.kind, n.unit, d.singular_value AS sv, d.explained, d.variance AS dir_variance,
       d.filter AS dir_filter, n.act_min
FROM neurons n JOIN layers l ON l.id = n.layer_id JOIN models m ON m.id = n.model_id
LEFT JOIN classes tc ON tc.id = n.top_class_id LEFT JOIN classes cc ON cc.id = n.csi_class_id
LEFT JOIN directions d ON d.neuron_id = n.id;
COMMENT ON VIEW neuron_view IS 'One row per neuron with its model, layer, alias, indexes, top class and colour name: the common join.';
COMMENT ON COLUMN neuron_view.id IS 'neurons.id.';
COMMENT ON COLUMN neuron_view.key IS 'model/layer/unit: the channel number, or a direction''s name (resnet20/conv19/svd3).';
COMMENT ON COLUMN neuron_view.model IS 'Model name.';
COMMENT ON COLUMN neuron_view.layer IS 'Layer name as selected.';
COMMENT ON COLUMN neuron_view.alias IS 'Layer alias.';
COMMENT ON COLUMN neuron_view.node IS 'torch.fx node.';
COMMENT ON COLUMN neuron_view.channel IS 'Channel index.';
COMMENT ON COLUMN neuron_view.act_max IS 'a_max.';
COMMENT ON COLUMN neuron_view.act_mean IS 'Mean per-image activation.';
COMMENT ON COLUMN neuron_view.act_std IS 'Std of the per-image activation.';
COMMENT ON COLUMN neuron_view.sparsity IS 'Fraction of positions where the unit is <= 0.';
COMMENT ON COLUMN neuron_view.dead IS 'Dead: (near) zero activation range over the dataset (a_max <= 0, constant, or below 1e-6 of the layer median); no colour or class claims.';
COMMENT ON COLUMN neuron_view.auc IS 'Area under the ranked normalised curve.';
COMMENT ON COLUMN neuron_view.nf_n IS 'Crops in the NF.';
COMMENT ON COLUMN neuron_view.nf_self_response IS 'Response to its own NF / a_max.';
COMMENT ON COLUMN neuron_view.color_index IS 'alpha (seed 004 eq. 2): angle of the first weighted principal component of the NF colours to the intensity axis / 90; NULL for a flat NF.';
COMMENT ON COLUMN neuron_view.hue IS 'Hue angle.';
COMMENT ON COLUMN neuron_view.hue_name IS 'Colour the hue points to.';
COMMENT ON COLUMN neuron_view.color_name IS 'Dominant chromatic colour name.';
COMMENT ON COLUMN neuron_view.color_share IS 'Its share.';
COMMENT ON COLUMN neuron_view.color_response IS 'Colour response index.';
COMMENT ON COLUMN neuron_view.class_index IS 'gamma.';
COMMENT ON COLUMN neuron_view.class_m IS 'M.';
COMMENT ON COLUMN neuron_view.top_class IS 'Class with the largest f_c.';
COMMENT ON COLUMN neuron_view.top_class_share IS 'Its f_c.';
COMMENT ON COLUMN neuron_view.csi IS 'Morcos et al. CSI.';
COMMENT ON COLUMN neuron_view.csi_class IS 'Class of the largest mean activation.';
COMMENT ON COLUMN neuron_view.rf_size IS 'Receptive field size of the channel (max of h, w).';
COMMENT ON COLUMN neuron_view.n_images IS 'Images seen.';
COMMENT ON COLUMN neuron_view.mean_chroma IS 'Chroma of the NF''s weighted mean colour (opponent units); not alpha: finds flat colour blobs.';
COMMENT ON COLUMN neuron_view.top_class_wnid IS 'WordNet id of the top class, when it has one.';
COMMENT ON COLUMN neuron_view.csi_mean IS 'CSI of Morcos et al. (class means of the spatial mean; ingest --spatial-means).';
COMMENT ON COLUMN neuron_view.weak IS 'a_max below activity_floor x the layer median: left out of selectivity rankings.';
COMMENT ON COLUMN neuron_view.kind IS 'Unit kind: channel (a neuron), or a direction: svd, random, user (seed 001).';
COMMENT ON COLUMN neuron_view.unit IS 'Channel number, or the direction''s name (svd1, random3, a user''s name).';
COMMENT ON COLUMN neuron_view.sv IS 'Directions: singular value sqrt(n u''Ru) of the standardised image x channel matrix (seed 001''s scale).';
COMMENT ON COLUMN neuron_view.explained IS 'Directions: share of the layer''s standardised variance along it (u''Ru / trace R).';
COMMENT ON COLUMN neuron_view.dir_variance IS 'Directions: variance u''Ru of the standardised pooled activations along it.';
COMMENT ON COLUMN neuron_view.dir_filter IS 'Random directions: tail (past the variance cut-off) or none (the unconstrained baseline).';
COMMENT ON COLUMN neuron_view.act_min IS 'Directions: lowest value of the map over the dataset (its bottom image''s argmin).';

DROP TABLE IF EXISTS neuron_search;
CREATE TABLE neuron_search AS SELECT * FROM neuron_view ORDER BY id;
COMMENT ON TABLE neuron_search IS 'neuron_view materialised (refreshed whenever the index is written): what searches scan.';
COMMENT ON COLUMN neuron_search.id IS 'neurons.id.';
COMMENT ON COLUMN neuron_search.key IS 'model/layer/unit: the channel number, or a direction''s name (resnet20/conv19/svd3).';
COMMENT ON COLUMN neuron_search.model IS 'Model name.';
COMMENT ON COLUMN neuron_search.layer IS 'Layer name as selected.';
COMMENT ON COLUMN neuron_search.alias IS 'Layer alias.';
COMMENT ON COLUMN neuron_search.node IS 'torch.fx node.';
COMMENT ON COLUMN neuron_search.channel IS 'Channel index.';
COMMENT ON COLUMN neuron_search.act_max IS 'a_max.';
COMMENT ON COLUMN neuron_search.act_mean IS 'Mean per-image activation.';
COMMENT ON COLUMN neuron_search.act_std IS 'Std of the per-image activation.';
COMMENT ON COLUMN neuron_search.sparsity IS 'Fraction of positions where the unit is <= 0.';
COMMENT ON COLUMN neuron_search.dead IS 'Dead: (near) zero activation range over the dataset (a_max <= 0, constant, or below 1e-6 of the layer median); no colour or class claims.';
COMMENT ON COLUMN neuron_search.auc IS 'Area under the ranked normalised curve.';
COMMENT ON COLUMN neuron_search.nf_n IS 'Crops in the NF.';
COMMENT ON COLUMN neuron_search.nf_self_response IS 'Response to its own NF / a_max.';
COMMENT ON COLUMN neuron_search.color_index IS 'alpha (seed 004 eq. 2): angle of the first weighted principal component of the NF colours to the intensity axis / 90; NULL for a flat NF.';
COMMENT ON COLUMN neuron_search.hue IS 'Hue angle.';
COMMENT ON COLUMN neuron_search.hue_name IS 'Colour the hue points to.';
COMMENT ON COLUMN neuron_search.color_name IS 'Dominant chromatic colour name.';
COMMENT ON COLUMN neuron_search.color_share IS 'Its share.';
COMMENT ON COLUMN neuron_search.color_response IS 'Colour response index.';
COMMENT ON COLUMN neuron_search.class_index IS 'gamma.';
COMMENT ON COLUMN neuron_search.class_m IS 'M.';
COMMENT ON COLUMN neuron_search.top_class IS 'Class with the largest f_c.';
COMMENT ON COLUMN neuron_search.top_class_share IS 'Its f_c.';
COMMENT ON COLUMN neuron_search.csi IS 'Morcos et al. CSI.';
COMMENT ON COLUMN neuron_search.csi_class IS 'Class of the largest mean activation.';
COMMENT ON COLUMN neuron_search.rf_size IS 'Receptive field size of the channel (max of h, w).';
COMMENT ON COLUMN neuron_search.n_images IS 'Images seen.';
COMMENT ON COLUMN neuron_search.mean_chroma IS 'Chroma of the NF''s weighted mean colour (opponent units); not alpha: finds flat colour blobs.';
COMMENT ON COLUMN neuron_search.top_class_wnid IS 'WordNet id of the top class, when it has one.';
COMMENT ON COLUMN neuron_search.csi_mean IS 'CSI of Morcos et al. (class means of the spatial mean; ingest --spatial-means).';
COMMENT ON COLUMN neuron_search.weak IS 'a_max below activity_floor x the layer median: left out of selectivity rankings.';
COMMENT ON COLUMN neuron_search.kind IS 'Unit kind: channel (a neuron), or a direction: svd, random, user (seed 001).';
COMMENT ON COLUMN neuron_search.unit IS 'Channel number, or the direction''s name (svd1, random3, a user''s name).';
COMMENT ON COLUMN neuron_search.sv IS 'Directions: singular value sqrt(n u''Ru) of the standardised image x channel matrix (seed 001''s scale).';
COMMENT ON COLUMN neuron_search.explained IS 'Directions: share of the layer''s standardised variance along it (u''Ru / trace R).';
COMMENT ON COLUMN neuron_search.dir_variance IS 'Directions: variance u''Ru of the standardised pooled activations along it.';
COMMENT ON COLUMN neuron_search.dir_filter IS 'Random directions: tail (past the variance cut-off) or none (the unconstrained baseline).';
COMMENT ON COLUMN neuron_search.act_min IS 'Directions: lowest value of the map over the dataset (its bottom image''s argmin).';
