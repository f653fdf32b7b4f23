"""The query service: a FastAPI app (JSON API + server-rendered web gallery) over one index.

`create_app(DIR, token=None)` builds the app; `serve(DIR, host, port, token)` runs it with uvicorn.
The routes call the Python API (neuronindex.api.Index) and only translate to HTTP: one JSON error
shape for every failure, bearer auth when a token is set, an upload size limit, and a live index:
when an ingest publishes a new index.duckdb, the next request opens it.
"""
from __future__ import annotations

from neuronindex.service.app import create_app, serve

__all__ = ["create_app", "serve"]
