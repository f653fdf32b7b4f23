-- Seed 000 section 3: the category hierarchy (Algorithm 1) with its minimum spanning tree, and
-- filter prediction trees (Algorithm 2); seed 002: 2-D representation maps of neurons and crops.
CREATE TABLE hierarchies (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL,
    layer_id INTEGER NOT NULL,
    pooling VARCHAR NOT NULL,
    n_classes INTEGER NOT NULL,
    centre_class_id INTEGER,
    hub_class_id INTEGER,
    wordnet_correlation DOUBLE,
    wordnet_baseline DOUBLE,
    wordnet_sibling_auc DOUBLE,
    wordnet_classes INTEGER,
    created VARCHAR,
    UNIQUE (model_id, layer_id, pooling)
);
COMMENT ON TABLE hierarchies IS 'Category hierarchy of a model''s classes at one layer (seed 000, Algorithm 1): each class is the mean of its images'' pooled feature vectors (class_means); category distance = cosine distance; the closest pair of top nodes merges into a parent whose distance to every other node is the average of its two children''s (WPGMA). Built for the deepest layer at ingest; `neuronindex categories` for others.';
COMMENT ON COLUMN hierarchies.model_id IS 'models.id.';
COMMENT ON COLUMN hierarchies.layer_id IS 'layers.id of the feature vectors.';
COMMENT ON COLUMN hierarchies.pooling IS 'max: class means of each channel''s spatial maximum (the neurons'' activation); mean: of its spatial mean (needs ingest --spatial-means).';
COMMENT ON COLUMN hierarchies.n_classes IS 'Classes with images (the leaves).';
COMMENT ON COLUMN hierarchies.centre_class_id IS 'classes.id of the minimum spanning tree''s centre: the class whose farthest class along the tree is nearest (least eccentricity).';
COMMENT ON COLUMN hierarchies.hub_class_id IS 'classes.id of the class with the most edges in the minimum spanning tree (ties: the more central).';
COMMENT ON COLUMN hierarchies.wordnet_correlation IS 'Spearman correlation over class pairs between the merge height (cophenetic distance) and the WordNet tree distance (hypernym path length); NULL without WordNet ids.';
COMMENT ON COLUMN hierarchies.wordnet_baseline IS 'The same correlation with the class labels shuffled (mean of 20 shuffles): what chance gives.';
COMMENT ON COLUMN hierarchies.wordnet_sibling_auc IS 'Probability that a pair of WordNet siblings (same first hypernym) merges below another pair of classes, ties counting half (chance: 0.5).';
COMMENT ON COLUMN hierarchies.wordnet_classes IS 'Classes with a WordNet id taking part in the two scores.';

CREATE TABLE hierarchy_nodes (
    hierarchy_id INTEGER NOT NULL,
    node INTEGER NOT NULL,
    parent INTEGER,
    class_id INTEGER,
    height DOUBLE NOT NULL,
    size INTEGER NOT NULL,
    leaf_order INTEGER,
    mst_degree INTEGER,
    eccentricity DOUBLE,
    PRIMARY KEY (hierarchy_id, node)
);
COMMENT ON TABLE hierarchy_nodes IS 'Nodes of a category hierarchy: leaves 0..n-1 are classes, node n + i is the i-th merge (as scipy''s linkage numbers them); the root has no parent.';
COMMENT ON COLUMN hierarchy_nodes.hierarchy_id IS 'hierarchies.id.';
COMMENT ON COLUMN hierarchy_nodes.node IS 'Leaves 0..n-1 (classes), then merges in order.';
COMMENT ON COLUMN hierarchy_nodes.parent IS 'The node this one merged into; NULL at the root.';
COMMENT ON COLUMN hierarchy_nodes.class_id IS 'classes.id of a leaf; NULL for merges.';
COMMENT ON COLUMN hierarchy_nodes.height IS 'Category distance at which the node''s two children merged; 0 for leaves.';
COMMENT ON COLUMN hierarchy_nodes.size IS 'Classes under the node.';
COMMENT ON COLUMN hierarchy_nodes.leaf_order IS 'Leaves: position in the dendrogram (left to right).';
COMMENT ON COLUMN hierarchy_nodes.mst_degree IS 'Leaves: edges of the class in the minimum spanning tree.';
COMMENT ON COLUMN hierarchy_nodes.eccentricity IS 'Leaves: distance along the minimum spanning tree to the farthest class.';

CREATE TABLE class_distances (
    hierarchy_id INTEGER NOT NULL,
    class_a INTEGER NOT NULL,
    class_b INTEGER NOT NULL,
    distance DOUBLE NOT NULL,
    cophenetic DOUBLE NOT NULL,
    in_mst BOOLEAN NOT NULL,
    PRIMARY KEY (hierarchy_id, class_a, class_b)
);
COMMENT ON TABLE class_distances IS 'Every ordered pair of classes of a hierarchy: category distance, merge height, and whether the edge is in the minimum spanning tree of the dense class graph.';
COMMENT ON COLUMN class_distances.hierarchy_id IS 'hierarchies.id.';
COMMENT ON COLUMN class_distances.class_a IS 'classes.id.';
COMMENT ON COLUMN class_distances.class_b IS 'classes.id (each pair appears both ways).';
COMMENT ON COLUMN class_distances.distance IS '1 - cosine similarity of the two class means.';
COMMENT ON COLUMN class_distances.cophenetic IS 'Height of the node where the two classes first share a parent.';
COMMENT ON COLUMN class_distances.in_mst IS 'The edge belongs to the minimum spanning tree.';

CREATE TABLE prediction_trees (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL,
    layer_id INTEGER NOT NULL,
    class_id INTEGER NOT NULL,
    pooling VARCHAR NOT NULL,
    n_images INTEGER NOT NULL,
    class_images INTEGER NOT NULL,
    n_filters INTEGER NOT NULL,
    max_images INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    root INTEGER NOT NULL,
    seconds DOUBLE,
    created VARCHAR,
    UNIQUE (model_id, layer_id, class_id, pooling)
);
COMMENT ON TABLE prediction_trees IS 'Filter prediction tree of one class at one layer (seed 000, Algorithm 2): the class''s images are the root''s children, reaching every filter; the two closest children (cosine distance over the filters both reach) merge into a node reaching their common filters minus the critical filter, the one whose removal changes that distance most; until no two children of the root share two filters.';
COMMENT ON COLUMN prediction_trees.model_id IS 'models.id.';
COMMENT ON COLUMN prediction_trees.layer_id IS 'layers.id.';
COMMENT ON COLUMN prediction_trees.class_id IS 'classes.id (a leaf class, or a class above leaves: then the images of every class under it).';
COMMENT ON COLUMN prediction_trees.pooling IS 'max or mean: each filter''s map pooled to one value per image.';
COMMENT ON COLUMN prediction_trees.n_images IS 'Images in the tree (its leaves).';
COMMENT ON COLUMN prediction_trees.class_images IS 'Images of the class in the dataset; above max_images a seeded sample was taken.';
COMMENT ON COLUMN prediction_trees.n_filters IS 'Filters (channels) of the layer.';
COMMENT ON COLUMN prediction_trees.max_images IS 'The cap on images per tree used.';
COMMENT ON COLUMN prediction_trees.seed IS 'Seed of the image sample.';
COMMENT ON COLUMN prediction_trees.root IS 'prediction_tree_nodes.node of the root.';

CREATE TABLE prediction_tree_nodes (
    tree_id INTEGER NOT NULL,
    node INTEGER NOT NULL,
    parent INTEGER,
    image_id INTEGER,
    critical_channel INTEGER,
    critical_neuron_id INTEGER,
    distance DOUBLE,
    change DOUBLE,
    n_reachable INTEGER,
    reachable INTEGER[],
    PRIMARY KEY (tree_id, node)
);
COMMENT ON TABLE prediction_tree_nodes IS 'Nodes of a prediction tree: leaves 0..n-1 are images, merges follow in order, the root last.';
COMMENT ON COLUMN prediction_tree_nodes.tree_id IS 'prediction_trees.id.';
COMMENT ON COLUMN prediction_tree_nodes.node IS 'Leaves (images) first, then merges in order, the root last.';
COMMENT ON COLUMN prediction_tree_nodes.parent IS 'The node this one merged into (the root for its children); NULL at the root.';
COMMENT ON COLUMN prediction_tree_nodes.image_id IS 'images.id of a leaf.';
COMMENT ON COLUMN prediction_tree_nodes.critical_channel IS 'Merges: the critical filter (channel) removed from the common reachable set.';
COMMENT ON COLUMN prediction_tree_nodes.critical_neuron_id IS 'neurons.id of the critical filter.';
COMMENT ON COLUMN prediction_tree_nodes.distance IS 'Merges: cosine distance of the two children over their common reachable filters.';
COMMENT ON COLUMN prediction_tree_nodes.change IS 'Merges: |distance without the critical filter - distance|.';
COMMENT ON COLUMN prediction_tree_nodes.n_reachable IS 'Filters the node reaches.';
COMMENT ON COLUMN prediction_tree_nodes.reachable IS 'The channels the node reaches (NULL for leaves and the root, which reach all).';

CREATE TABLE maps (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL,
    layer_id INTEGER NOT NULL,
    space VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    params JSON,
    seed INTEGER,
    fingerprint VARCHAR NOT NULL,
    n_points INTEGER NOT NULL,
    seconds DOUBLE,
    created VARCHAR,
    UNIQUE (layer_id, space)
);
COMMENT ON TABLE maps IS 'Representation maps (seed 002; Activation-Atlas-like): 2-D layouts of a layer''s neurons by their prototype embedding (space neurons) or of its stored top crops by their patch embedding (space crops), by t-SNE or UMAP. `neuronindex map` builds them; a map whose embeddings changed is stale (fingerprint) and rebuilt.';
COMMENT ON COLUMN maps.model_id IS 'models.id.';
COMMENT ON COLUMN maps.layer_id IS 'layers.id.';
COMMENT ON COLUMN maps.space IS 'neurons (prototype embeddings) or crops (patch embeddings).';
COMMENT ON COLUMN maps.method IS 'tsne or umap.';
COMMENT ON COLUMN maps.params IS 'The method''s parameters (perplexity or n_neighbors, metric, ...).';
COMMENT ON COLUMN maps.seed IS 'Random seed of the layout.';
COMMENT ON COLUMN maps.fingerprint IS 'Hash of the embeddings the map was made from: different from the stored one when stale.';
COMMENT ON COLUMN maps.n_points IS 'Points on the map.';
COMMENT ON COLUMN maps.seconds IS 'Time the layout took.';

CREATE TABLE map_points (
    map_id INTEGER NOT NULL,
    neuron_id INTEGER NOT NULL,
    rank INTEGER,
    x DOUBLE NOT NULL,
    y DOUBLE NOT NULL
);
COMMENT ON TABLE map_points IS 'Coordinates of a map: one per neuron (neurons) or per stored top crop (crops: rank = topk.rank), scaled to [0, 1].';
COMMENT ON COLUMN map_points.map_id IS 'maps.id.';
COMMENT ON COLUMN map_points.neuron_id IS 'neurons.id.';
COMMENT ON COLUMN map_points.rank IS 'crops: the crop''s top-k rank; NULL for neurons.';
COMMENT ON COLUMN map_points.x IS 'Horizontal position in [0, 1].';
COMMENT ON COLUMN map_points.y IS 'Vertical position in [0, 1] (0 = top).';
COMMENT ON COLUMN hierarchies.id IS 'Hierarchy id (class_distances.hierarchy_id, hierarchy_nodes.hierarchy_id).';
COMMENT ON COLUMN hierarchies.created IS 'When it was built (UTC).';
COMMENT ON COLUMN prediction_trees.id IS 'Tree id (prediction_tree_nodes.tree_id).';
COMMENT ON COLUMN prediction_trees.seconds IS 'Time the forward of the images and the algorithm took.';
COMMENT ON COLUMN prediction_trees.created IS 'When it was built (UTC).';
COMMENT ON COLUMN maps.id IS 'Map id (map_points.map_id).';
COMMENT ON COLUMN maps.created IS 'When it was made (UTC).';

CREATE VIEW class_distance_view AS
SELECT m.name AS model, l.name AS layer, h.pooling, a.name AS class_a, b.name AS class_b, d.distance, d.cophenetic,
       d.in_mst
FROM class_distances d JOIN hierarchies h ON h.id = d.hierarchy_id JOIN layers l ON l.id = h.layer_id
JOIN models m ON m.id = h.model_id JOIN classes a ON a.id = d.class_a JOIN classes b ON b.id = d.class_b;
COMMENT ON VIEW class_distance_view IS 'Class pairs of every stored category hierarchy by name: e.g. the classes nearest to cat at a layer.';
COMMENT ON COLUMN class_distance_view.model IS 'Model name.';
COMMENT ON COLUMN class_distance_view.layer IS 'Layer of the class vectors.';
COMMENT ON COLUMN class_distance_view.pooling IS 'max or mean (see hierarchies.pooling).';
COMMENT ON COLUMN class_distance_view.class_a IS 'Class name.';
COMMENT ON COLUMN class_distance_view.class_b IS 'The other class''s name.';
COMMENT ON COLUMN class_distance_view.distance IS '1 - cosine similarity of the two class means.';
COMMENT ON COLUMN class_distance_view.cophenetic IS 'Merge height of the pair in the hierarchy.';
COMMENT ON COLUMN class_distance_view.in_mst IS 'The pair is an edge of the minimum spanning tree.';
