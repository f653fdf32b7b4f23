-- Network Dissection (Bau et al., CVPR 2017): concepts, dissections and every unit's IoU with the
-- concepts of a concept set (neuronindex dissect).
CREATE TABLE concepts (
    id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    source VARCHAR NOT NULL
);
COMMENT ON TABLE concepts IS 'Concepts of the concept sets units were dissected with (Network Dissection, Bau et al. 2017): a name (red, disc, grass) in a category (colour, object, texture).';
COMMENT ON COLUMN concepts.id IS 'Concept id.';
COMMENT ON COLUMN concepts.name IS 'The concept''s name (a search word).';
COMMENT ON COLUMN concepts.category IS 'Its category: IoU counts only the images annotated for it.';
COMMENT ON COLUMN concepts.source IS 'The concept set it comes from (colour: every pixel named by the colour model).';
CREATE TABLE dissections (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL,
    layer_id INTEGER NOT NULL,
    source VARCHAR NOT NULL,
    n_images BIGINT,
    quantile DOUBLE,
    iou_threshold DOUBLE,
    mask_h INTEGER,
    mask_w INTEGER,
    seconds DOUBLE,
    created TIMESTAMP
);
COMMENT ON TABLE dissections IS 'One dissection of one layer with one concept set: its images, the activation quantile that thresholds the maps and the IoU above which a unit counts as interpretable.';
COMMENT ON COLUMN dissections.id IS 'Dissection id.';
COMMENT ON COLUMN dissections.model_id IS 'models.id.';
COMMENT ON COLUMN dissections.layer_id IS 'layers.id.';
COMMENT ON COLUMN dissections.source IS 'The concept set (colour, or a folder).';
COMMENT ON COLUMN dissections.n_images IS 'Concept images seen.';
COMMENT ON COLUMN dissections.quantile IS 'q: each unit''s threshold is the top-q quantile of all its map values over the images (0.005).';
COMMENT ON COLUMN dissections.iou_threshold IS 'IoU above which a unit''s best concept labels it (0.04).';
COMMENT ON COLUMN dissections.mask_h IS 'Height of the masks the maps were upsampled to (pixels).';
COMMENT ON COLUMN dissections.mask_w IS 'Width of the masks.';
COMMENT ON COLUMN dissections.seconds IS 'Time the dissection of the layer took: its own tallies (layers tally in parallel threads) plus its share of reading the images and the forward pass.';
COMMENT ON COLUMN dissections.created IS 'When it was made (UTC).';
CREATE TABLE unit_concepts (
    dissection_id INTEGER NOT NULL,
    neuron_id INTEGER NOT NULL,
    concept_id INTEGER NOT NULL,
    iou DOUBLE NOT NULL,
    rank INTEGER NOT NULL,
    threshold DOUBLE
);
COMMENT ON TABLE unit_concepts IS 'Each unit''s best concepts by IoU (rank 1 is its label when iou exceeds the dissection''s iou_threshold): IoU = sum over images of |M ∩ L| / sum of |M ∪ L|, M the unit''s map upsampled by its receptive field and thresholded, L the concept''s mask.';
COMMENT ON COLUMN unit_concepts.dissection_id IS 'dissections.id.';
COMMENT ON COLUMN unit_concepts.neuron_id IS 'neurons.id.';
COMMENT ON COLUMN unit_concepts.concept_id IS 'concepts.id.';
COMMENT ON COLUMN unit_concepts.iou IS 'Intersection over union of the unit''s thresholded maps with the concept''s masks.';
COMMENT ON COLUMN unit_concepts.rank IS '1 = the unit''s best concept.';
COMMENT ON COLUMN unit_concepts.threshold IS 'The unit''s activation threshold T (the same on each of its rows): 1/64 of an octave at most below the exact quantile.';
CREATE TABLE dissection_images (
    dissection_id INTEGER NOT NULL,
    neuron_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    path VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    activation DOUBLE
);
COMMENT ON TABLE dissection_images IS 'Each unit''s top concept images in a dissection (by the spatial maximum of its map), to show its thresholded map over a concept''s mask.';
COMMENT ON COLUMN dissection_images.dissection_id IS 'dissections.id.';
COMMENT ON COLUMN dissection_images.neuron_id IS 'neurons.id.';
COMMENT ON COLUMN dissection_images.rank IS '1 = the image the unit fires most on.';
COMMENT ON COLUMN dissection_images.path IS 'The concept image (for colour concepts: the ingested image''s path).';
COMMENT ON COLUMN dissection_images.source IS 'The dataset source of an ingested image (colour concepts); empty for a concept folder''s image.';
COMMENT ON COLUMN dissection_images.activation IS 'The spatial maximum of the unit''s map on it.';
