-- A materialised copy of neuron_view, refreshed by every write (store.staged), so searches scan
-- one table: no joins per query, and DuckDB fetches the full rows of a top-N only.
CREATE TABLE neuron_search AS SELECT * FROM neuron_view ORDER BY id;
COMMENT ON TABLE neuron_search IS 'neuron_view materialised (refreshed whenever the index is written): what searches scan.';
COMMENT ON VIEW neuron_view IS 'One row per neuron with its model, layer, alias, indexes, top class and colour name: the common join.';
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
COMMENT ON COLUMN neuron_search.dead IS 'Never fires.';
COMMENT ON COLUMN neuron_search.auc IS 'Area under the ranked normalised curve.';
COMMENT ON COLUMN neuron_search.nf_n IS 'Crops in the NF.';
COMMENT ON COLUMN neuron_search.nf_self_response IS 'Response to its own NF / a_max.';
COMMENT ON COLUMN neuron_search.color_index IS 'alpha.';
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

-- neuron_classes ordered by class, so a class filter reads only the row groups of its classes.
CREATE TABLE class_search AS SELECT class_id, neuron_id, share, rank FROM neuron_classes ORDER BY class_id, neuron_id;
COMMENT ON TABLE class_search IS 'neuron_classes ordered by class (refreshed whenever the index is written): what class filters scan.';
COMMENT ON COLUMN class_search.class_id IS 'classes.id (a leaf class or an ancestor).';
COMMENT ON COLUMN class_search.neuron_id IS 'neurons.id.';
COMMENT ON COLUMN class_search.share IS 'f_c (ancestors: summed over descendant leaves).';
COMMENT ON COLUMN class_search.rank IS 'Rank among leaves (or among ancestors).';
