-- Colour names as a person sees the NF (issue 37): the dominant end of the NF's first principal
-- component names it and gives its hue; a two-colour (opponent) NF is named by both ends
-- (color_second); color_label is what the tour, searches and the gallery show, NULL below the
-- colour threshold. `neuronindex indexes` fills them for an index written before.
ALTER TABLE neurons ADD COLUMN color_second VARCHAR;
ALTER TABLE neurons ADD COLUMN color_label VARCHAR;
COMMENT ON COLUMN neurons.color_second IS 'A two-colour (opponent) NF: the other end''s colour name; NULL for one colour.';
COMMENT ON COLUMN neurons.color_label IS 'color_name, or both ends (blue/orange); NULL when not colour selective (alpha below color_threshold).';
COMMENT ON COLUMN neurons.color_name IS 'Colour name of the NF''s dominant end (first principal component, larger area x chroma).';
COMMENT ON COLUMN neurons.hue IS 'Hue (degrees) of the dominant end''s colour around the achromatic axis.';

-- the papers by name, not by our file numbers
COMMENT ON COLUMN layers.sparsity IS 'Fraction of (image, position, channel) where the layer does not fire (<= 0); Yu et al. 2014, Fig. 6.';
COMMENT ON COLUMN neurons.auc IS 'Area under the ranked normalised activation curve, ranks 1..400, in [0, 1] (Rafegas et al. 2020, Fig. 1).';
COMMENT ON COLUMN neurons.nf_self_response IS 'Activation on its own NF placed at a central unit, / act_max (Rafegas et al. 2020, Fig. 4).';
COMMENT ON COLUMN neurons.color_index IS 'Colour selectivity index alpha in [0, 1] (Rafegas et al. 2020, eq. 2); >= 0.4 is colour selective.';
COMMENT ON COLUMN neurons.class_index IS 'Class selectivity index gamma = (N - M) / (N - 1) over the top N images (Rafegas et al. 2020, eqs. 3-4).';
COMMENT ON TABLE curves IS 'Ranked normalised activation curves (Rafegas et al. 2020, Fig. 1).';
COMMENT ON TABLE neuron_features IS 'Neuron Features (Rafegas et al. 2020, eq. 1) and crop sprites.';
COMMENT ON COLUMN layers.spectrum IS 'Every singular value of the layer''s standardised image x channel matrix (pooled activations), descending; NULL without directions (Zhang (CS231n), Fig. 5).';
COMMENT ON TABLE bottomk IS 'Bottom images per unit (Zhang (CS231n)): the lowest activations, ties by image id. A neuron''s activation is the spatial maximum (location: its argmax); a direction''s is the minimum of its map (location: the argmin).';
COMMENT ON TABLE directions IS 'Directions of a layer (Zhang (CS231n)) indexed as units: u over the standardised channels; the map is weights . a + offset = u . ((a - mu) / sigma).';
COMMENT ON TABLE visualizations IS 'Activation maximisation (Dai 2020 and Øygard 2016): the image found by gradient ascent on the input for a neuron, a direction, a class or a weighted sum, with its trace and how hard it drives the target.';
COMMENT ON COLUMN visualizations.start IS 'NULL when started from seeded noise; else the path of the real start image (Dai 2020 section 2.1).';
COMMENT ON COLUMN visualizations.diff_png IS 'From a start image: |final - start|, scaled to its maximum (the accumulated gradient of Dai 2020 Fig. 2).';
COMMENT ON TABLE hierarchies IS 'Category hierarchy of a model''s classes at one layer (Dai 2020, Algorithm 1): each class is the mean of its images'' pooled feature vectors (class_means); category distance = cosine distance; the closest pair of top nodes merges into a parent whose distance to every other node is the average of its two children''s (WPGMA). Built for the deepest layer at ingest; `neuronindex categories` for others.';
COMMENT ON TABLE prediction_trees IS 'Filter prediction tree of one class at one layer (Dai 2020, Algorithm 2): the class''s images are the root''s children, reaching every filter; the two closest children (cosine distance over the filters both reach) merge into a node reaching their common filters minus the critical filter, the one whose removal changes that distance most; until no two children of the root share two filters.';
COMMENT ON TABLE maps IS 'Representation maps (Yu et al. 2014; Activation-Atlas-like): 2-D layouts of a layer''s neurons by their prototype embedding (space neurons) or of its stored top crops by their patch embedding (space crops), by t-SNE or UMAP. `neuronindex map` builds them; a map whose embeddings changed is stale (fingerprint) and rebuilt.';

DROP TABLE IF EXISTS neuron_search;
CREATE OR REPLACE VIEW neuron_view AS
SELECT n.id, n.key, m.name AS model, l.name AS layer, l.alias, l.node, n.channel, n.act_max, n.act_mean, n.act_std,
       n.sparsity, n.dead, n.auc, n.nf_n, n.nf_self_response, n.color_index, n.hue, n.hue_name, n.color_name,
       n.color_share, n.color_response, n.class_index, n.class_m, tc.name AS top_class, n.top_class_share, n.csi,
       cc.name AS csi_class, greatest(n.rf_h, n.rf_w) AS rf_size, n.n_images, n.mean_chroma, tc.wnid AS top_class_wnid,
       n.weak, n.csi_mean, n.kind, n.unit, d.singular_value AS sv, d.explained, d.variance AS dir_variance,
       d.filter AS dir_filter, n.act_min, v.activation_ratio AS viz_activation_ratio, v.objective AS viz_objective,
       v.color_index AS viz_color_index, v.hue AS viz_hue,
       n.color_second, n.color_label
FROM neurons n JOIN layers l ON l.id = n.layer_id JOIN models m ON m.id = n.model_id
LEFT JOIN classes tc ON tc.id = n.top_class_id LEFT JOIN classes cc ON cc.id = n.csi_class_id
LEFT JOIN directions d ON d.neuron_id = n.id
LEFT JOIN (SELECT * FROM visualizations WHERE neuron_id IS NOT NULL AND start IS NULL
           QUALIFY row_number() OVER (PARTITION BY neuron_id ORDER BY objective = 'unit' DESC, id DESC) = 1) v
       ON v.neuron_id = n.id;
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
COMMENT ON COLUMN neuron_view.color_index IS 'alpha (Rafegas et al. 2020 eq. 2): angle of the first weighted principal component of the NF colours to the intensity axis / 90; NULL for a flat NF.';
COMMENT ON COLUMN neuron_view.hue IS 'Hue (degrees) of the colour of the NF''s dominant end: the angle of its (O1, O2) around the achromatic axis, 0 = towards red (+O1), 90 = +O2 (yellowish).';
COMMENT ON COLUMN neuron_view.hue_name IS 'Colour name of the most saturated colour at that hue.';
COMMENT ON COLUMN neuron_view.color_name IS 'Colour name of the NF''s dominant end (the end of its first principal component with the larger area x chroma); stored for every NF, shown only where color_label is set.';
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
COMMENT ON COLUMN neuron_view.kind IS 'Unit kind: channel (a neuron), or a direction: svd, random, user (Zhang (CS231n)).';
COMMENT ON COLUMN neuron_view.unit IS 'Channel number, or the direction''s name (svd1, random3, a user''s name).';
COMMENT ON COLUMN neuron_view.sv IS 'Directions: singular value sqrt(n u''Ru) of the standardised image x channel matrix (Zhang (CS231n)''s scale).';
COMMENT ON COLUMN neuron_view.explained IS 'Directions: share of the layer''s standardised variance along it (u''Ru / trace R).';
COMMENT ON COLUMN neuron_view.dir_variance IS 'Directions: variance u''Ru of the standardised pooled activations along it.';
COMMENT ON COLUMN neuron_view.dir_filter IS 'Random directions: tail (past the variance cut-off) or none (the unconstrained baseline).';
COMMENT ON COLUMN neuron_view.act_min IS 'Directions: lowest value of the map over the dataset (its bottom image''s argmin).';
COMMENT ON COLUMN neuron_view.viz_activation_ratio IS 'Activation maximisation (neuronindex visualize): the unit''s activation on its optimised image / a_max over the dataset; >= 1: the image drives it at least as hard as its best dataset image. The unit objective when stored, else channel.';
COMMENT ON COLUMN neuron_view.viz_objective IS 'Objective of that optimised image: unit (centre unit, its receptive field) or channel (mean of the map).';
COMMENT ON COLUMN neuron_view.viz_color_index IS 'alpha of the optimised image''s receptive field (the NF''s colour index with uniform pixel weights).';
COMMENT ON COLUMN neuron_view.viz_hue IS 'Hue of the optimised image''s field (as the NF''s hue).';
COMMENT ON COLUMN neuron_view.color_label IS 'What a person is told: color_name, or both ends (blue/orange) for a two-colour NF; NULL when the neuron is not colour selective (alpha below color_threshold, 0.4 by default).';
COMMENT ON COLUMN neuron_view.color_second IS 'A two-colour (opponent) NF: the other end''s colour name (blue/orange -> orange); NULL for one colour.';

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
COMMENT ON COLUMN neuron_search.color_index IS 'alpha (Rafegas et al. 2020 eq. 2): angle of the first weighted principal component of the NF colours to the intensity axis / 90; NULL for a flat NF.';
COMMENT ON COLUMN neuron_search.hue IS 'Hue (degrees) of the colour of the NF''s dominant end: the angle of its (O1, O2) around the achromatic axis, 0 = towards red (+O1), 90 = +O2 (yellowish).';
COMMENT ON COLUMN neuron_search.hue_name IS 'Colour name of the most saturated colour at that hue.';
COMMENT ON COLUMN neuron_search.color_name IS 'Colour name of the NF''s dominant end (the end of its first principal component with the larger area x chroma); stored for every NF, shown only where color_label is set.';
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
COMMENT ON COLUMN neuron_search.kind IS 'Unit kind: channel (a neuron), or a direction: svd, random, user (Zhang (CS231n)).';
COMMENT ON COLUMN neuron_search.unit IS 'Channel number, or the direction''s name (svd1, random3, a user''s name).';
COMMENT ON COLUMN neuron_search.sv IS 'Directions: singular value sqrt(n u''Ru) of the standardised image x channel matrix (Zhang (CS231n)''s scale).';
COMMENT ON COLUMN neuron_search.explained IS 'Directions: share of the layer''s standardised variance along it (u''Ru / trace R).';
COMMENT ON COLUMN neuron_search.dir_variance IS 'Directions: variance u''Ru of the standardised pooled activations along it.';
COMMENT ON COLUMN neuron_search.dir_filter IS 'Random directions: tail (past the variance cut-off) or none (the unconstrained baseline).';
COMMENT ON COLUMN neuron_search.act_min IS 'Directions: lowest value of the map over the dataset (its bottom image''s argmin).';
COMMENT ON COLUMN neuron_search.viz_activation_ratio IS 'Activation maximisation (neuronindex visualize): the unit''s activation on its optimised image / a_max over the dataset; >= 1: the image drives it at least as hard as its best dataset image. The unit objective when stored, else channel.';
COMMENT ON COLUMN neuron_search.viz_objective IS 'Objective of that optimised image: unit (centre unit, its receptive field) or channel (mean of the map).';
COMMENT ON COLUMN neuron_search.viz_color_index IS 'alpha of the optimised image''s receptive field (the NF''s colour index with uniform pixel weights).';
COMMENT ON COLUMN neuron_search.viz_hue IS 'Hue of the optimised image''s field (as the NF''s hue).';
COMMENT ON COLUMN neuron_search.color_label IS 'What a person is told: color_name, or both ends (blue/orange) for a two-colour NF; NULL when the neuron is not colour selective (alpha below color_threshold, 0.4 by default).';
COMMENT ON COLUMN neuron_search.color_second IS 'A two-colour (opponent) NF: the other end''s colour name (blue/orange -> orange); NULL for one colour.';
