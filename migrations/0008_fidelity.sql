-- Wave 2 fidelity: alpha per seed 004 (weighted mean removed), the mean-chroma measure beside it,
-- how a dataset's labels were read, and WordNet ids of top classes in the common join.
ALTER TABLE neurons ADD COLUMN weak BOOLEAN DEFAULT false;
COMMENT ON COLUMN neurons.weak IS 'a_max below activity_floor (0.05) x the layer''s median a_max: left out of selectivity rankings.';
ALTER TABLE neurons ADD COLUMN mean_chroma DOUBLE;
ALTER TABLE neurons ADD COLUMN csi_mean DOUBLE;
COMMENT ON COLUMN neurons.csi_mean IS 'CSI of Morcos et al. exactly: from class means of each map''s spatial mean (ingest --spatial-means); NULL otherwise.';
ALTER TABLE class_means ADD COLUMN mean_spatial DOUBLE;
COMMENT ON COLUMN class_means.mean_spatial IS 'Mean over the class''s images of the map''s spatial mean (ingest --spatial-means); NaN otherwise.';
COMMENT ON COLUMN neurons.mean_chroma IS 'Chroma of the NF''s weighted mean colour (opponent units); a measure for flat colour blobs, not alpha.';
COMMENT ON COLUMN datasets.n_problems IS 'Files skipped: found while listing (not images, broken or looping links, names that are not UTF-8) plus images that did not decode.';
ALTER TABLE layers ADD COLUMN aliases VARCHAR;
COMMENT ON COLUMN layers.aliases IS 'Every alias of the layer, comma-separated (conv1..convN, and VGG-style conv4_3 on plain chains).';
ALTER TABLE datasets ADD COLUMN labels VARCHAR;
ALTER TABLE datasets ADD COLUMN class_list VARCHAR;
COMMENT ON COLUMN datasets.class_list IS 'The class list that names numbered ground-truth labels, if any.';
COMMENT ON COLUMN datasets.labels IS 'How labels were read: folders, imagenet (file names nXXXXXXXX_*), regex:PATTERN, a ground-truth file, manifest, torchvision or none.';

-- columns nothing wrote or read: only finished ingests are published, image sizes were never recorded
ALTER TABLE ingests DROP COLUMN status;
ALTER TABLE ingests DROP COLUMN progress;
ALTER TABLE ingests ADD COLUMN run_key VARCHAR;
COMMENT ON COLUMN ingests.run_key IS 'Hash of model, name, images, layers and pass-1 parameters: a resumed run already published is not published twice.';
ALTER TABLE images DROP COLUMN width;
ALTER TABLE images DROP COLUMN height;

DROP TABLE neuron_search;
CREATE OR REPLACE VIEW neuron_view AS
SELECT n.id, n.key, m.name AS model, l.name AS layer, l.alias, l.node, n.channel, n.act_max, n.act_mean, n.act_std,
       n.sparsity, n.dead, n.auc, n.nf_n, n.nf_self_response, n.color_index, n.hue, n.hue_name, n.color_name,
       n.color_share, n.color_response, n.class_index, n.class_m, tc.name AS top_class, n.top_class_share, n.csi,
       cc.name AS csi_class, greatest(n.rf_h, n.rf_w) AS rf_size, n.n_images, n.mean_chroma, tc.wnid AS top_class_wnid,
       n.weak, n.csi_mean
FROM neurons n JOIN layers l ON l.id = n.layer_id JOIN models m ON m.id = n.model_id
LEFT JOIN classes tc ON tc.id = n.top_class_id LEFT JOIN classes cc ON cc.id = n.csi_class_id;
COMMENT ON VIEW neuron_view IS 'One row per neuron with its model, layer, alias, indexes, top class and colour name: the common join.';
COMMENT ON COLUMN neuron_view.id IS 'neurons.id.';
COMMENT ON COLUMN neuron_view.key IS 'model/layer/channel.';
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

CREATE TABLE neuron_search AS SELECT * FROM neuron_view ORDER BY id;
COMMENT ON TABLE neuron_search IS 'neuron_view materialised (refreshed whenever the index is written): what searches scan.';
COMMENT ON COLUMN neuron_search.id IS 'neurons.id.';
COMMENT ON COLUMN neuron_search.key IS 'model/layer/channel.';
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
