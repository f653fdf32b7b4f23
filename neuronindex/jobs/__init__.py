"""Jobs: the work that opens an index directory, computes and publishes (ingest, pass 2, recompute,
Ray, directions, categories, maps, visualisations, the demo). Imports query, science, nets, store and
the base modules; never the facade."""
