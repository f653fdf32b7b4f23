-- Seeds 000 and 003: activation maximisation images (neuronindex visualize), one row per target.
CREATE TABLE visualizations (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL,
    neuron_id INTEGER,                     -- NULL for class, layer and composite targets
    target VARCHAR NOT NULL,               -- a neuron key, class:NAME, or a weighted sum of terms
    objective VARCHAR NOT NULL,            -- unit, channel, class, prob, layer or sum
    start VARCHAR,                         -- NULL: from noise; else the start image's path
    image_png BLOB NOT NULL,
    diff_png BLOB,
    width INTEGER, height INTEGER,
    origin_x INTEGER, origin_y INTEGER,
    box_x0 INTEGER, box_y0 INTEGER, box_x1 INTEGER, box_y1 INTEGER,
    trace DOUBLE[],
    trace_steps INTEGER[],
    objective_value DOUBLE,
    activation DOUBLE,
    activation_ratio DOUBLE,
    color_index DOUBLE,
    hue DOUBLE,
    predicted VARCHAR,
    probability DOUBLE,
    flip_step INTEGER,
    steps INTEGER,
    seed INTEGER,
    parameters VARCHAR,
    params_hash VARCHAR,
    seconds DOUBLE,
    created TIMESTAMP
);
COMMENT ON TABLE visualizations IS 'Activation maximisation (seeds 000 and 003): the image found by gradient ascent on the input for a neuron, a direction, a class or a weighted sum, with its trace and how hard it drives the target.';
COMMENT ON COLUMN visualizations.id IS 'Row id.';
COMMENT ON COLUMN visualizations.model_id IS 'models.id.';
COMMENT ON COLUMN visualizations.neuron_id IS 'neurons.id of a neuron or direction target; NULL otherwise.';
COMMENT ON COLUMN visualizations.target IS 'What was maximised: a neuron key, class:NAME, or a sum such as 0.5*unit:KEY+class:NAME.';
COMMENT ON COLUMN visualizations.objective IS 'unit (the centre unit: its receptive field), channel (mean of the map), class (logit), prob (softmax), layer (mean of a whole layer) or sum.';
COMMENT ON COLUMN visualizations.start IS 'NULL when started from seeded noise; else the path of the real start image (seed 000 section 2.1).';
COMMENT ON COLUMN visualizations.image_png IS 'The optimised image, 8-bit RGB PNG (the input window of a unit objective, else the full input).';
COMMENT ON COLUMN visualizations.diff_png IS 'From a start image: |final - start|, scaled to its maximum (the accumulated gradient of seed 000 Fig. 2).';
COMMENT ON COLUMN visualizations.width IS 'Image width (px).';
COMMENT ON COLUMN visualizations.height IS 'Image height (px).';
COMMENT ON COLUMN visualizations.origin_x IS 'Where the image sits in the model input: left (a unit objective optimises only its window).';
COMMENT ON COLUMN visualizations.origin_y IS 'Top of the image in the model input.';
COMMENT ON COLUMN visualizations.box_x0 IS 'Unit objectives: the unit''s receptive field in the image (may cross its border).';
COMMENT ON COLUMN visualizations.box_y0 IS 'Field top.';
COMMENT ON COLUMN visualizations.box_x1 IS 'Field right (exclusive).';
COMMENT ON COLUMN visualizations.box_y1 IS 'Field bottom (exclusive).';
COMMENT ON COLUMN visualizations.trace IS 'The objective at steps 0, 32, 64, ... (on that step''s transformed image), then its final value.';
COMMENT ON COLUMN visualizations.trace_steps IS 'The step of each trace value (the last: steps, the stored image).';
COMMENT ON COLUMN visualizations.objective_value IS 'The objective on the stored 8-bit image, without transformations.';
COMMENT ON COLUMN visualizations.activation IS 'Neurons: the activation on the stored image (unit: the centre unit; channel: the map''s spatial maximum).';
COMMENT ON COLUMN visualizations.activation_ratio IS 'activation / a_max over the dataset: >= 1 when the image drives the neuron at least as hard as its best dataset image.';
COMMENT ON COLUMN visualizations.color_index IS 'alpha of the image''s field (the NF''s formula, uniform pixel weights); NULL for a flat image.';
COMMENT ON COLUMN visualizations.hue IS 'Hue of the image''s field in degrees (as the NF''s hue).';
COMMENT ON COLUMN visualizations.predicted IS 'The model''s class for the stored image (class objectives).';
COMMENT ON COLUMN visualizations.probability IS 'Softmax probability of the target class on the stored image (class objectives).';
COMMENT ON COLUMN visualizations.flip_step IS 'From a start image: the first step at which the model predicts the target class (NULL: never).';
COMMENT ON COLUMN visualizations.steps IS 'Optimisation steps.';
COMMENT ON COLUMN visualizations.seed IS 'Random seed (noise start, transformations).';
COMMENT ON COLUMN visualizations.parameters IS 'Every option used, as JSON (parameterisation, lr, regularisers, transformations, colour matrix).';
COMMENT ON COLUMN visualizations.params_hash IS 'Hash of the parameters: a run with the same ones skips the target (resumable, idempotent).';
COMMENT ON COLUMN visualizations.seconds IS 'Wall time of the batch this image was optimised in, divided by its images.';
COMMENT ON COLUMN visualizations.created IS 'When it was written.';

DROP TABLE IF EXISTS neuron_search;
CREATE OR REPLACE VIEW neuron_view AS
SELECT n.id, n.key, m.name AS model, l.name AS layer, l.alias, l.node, n.channel, n.act_max, n.act_mean, n.act_std,
       n.sparsity, n.dead, n.auc, n.nf_n, n.nf_self_response, n.color_index, n.hue, n.hue_name, n.color_name,
       n.color_share, n.color_response, n.class_index, n.class_m, tc.name AS top_class, n.top_class_share, n.csi,
       cc.name AS csi_class, greatest(n.rf_h, n.rf_w) AS rf_size, n.n_images, n.mean_chroma, tc.wnid AS top_class_wnid,
       n.weak, n.csi_mean, n.kind, n.unit, d.singular_value AS sv, d.explained, d.variance AS dir_variance,
       d.filter AS dir_filter, n.act_min, v.activation_ratio AS viz_activation_ratio, v.objective AS viz_objective,
       v.color_index AS viz_color_index, v.hue AS viz_hue
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
COMMENT ON COLUMN neuron_view.viz_activation_ratio IS 'Activation maximisation (neuronindex visualize): the unit''s activation on its optimised image / a_max over the dataset; >= 1: the image drives it at least as hard as its best dataset image. The unit objective when stored, else channel.';
COMMENT ON COLUMN neuron_view.viz_objective IS 'Objective of that optimised image: unit (centre unit, its receptive field) or channel (mean of the map).';
COMMENT ON COLUMN neuron_view.viz_color_index IS 'alpha of the optimised image''s receptive field (the NF''s colour index with uniform pixel weights).';
COMMENT ON COLUMN neuron_view.viz_hue IS 'Hue of the optimised image''s field (as the NF''s hue).';

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
COMMENT ON COLUMN neuron_search.viz_activation_ratio IS 'Activation maximisation (neuronindex visualize): the unit''s activation on its optimised image / a_max over the dataset; >= 1: the image drives it at least as hard as its best dataset image. The unit objective when stored, else channel.';
COMMENT ON COLUMN neuron_search.viz_objective IS 'Objective of that optimised image: unit (centre unit, its receptive field) or channel (mean of the map).';
COMMENT ON COLUMN neuron_search.viz_color_index IS 'alpha of the optimised image''s receptive field (the NF''s colour index with uniform pixel weights).';
COMMENT ON COLUMN neuron_search.viz_hue IS 'Hue of the optimised image''s field (as the NF''s hue).';
