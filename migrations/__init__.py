"""Schema versions of the neuronindex DuckDB file, applied in order by neuronindex.store.

Each file is `NNNN_name.sql`; NNNN is the version recorded in `schema_migrations`.
"""
