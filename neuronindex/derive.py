"""Everything computed after pass 1: pass 2 (crops, Neuron Features), selectivity, embeddings.

`run_all` returns {"writers": [callable(con, context), ...]}: each writer stores its part in
the staged database during publish, so a run either publishes everything or nothing.
"""
from __future__ import annotations


def run_all(run, results: list[dict], progress: bool = True, timings: dict | None = None) -> dict:
    return {"writers": []}
