"""Representation maps (Yu et al. 2014; Activation-Atlas-like): 2-D layouts of a layer.

  neurons   one point per neuron (and direction) of the layer, from its prototype embedding
            (the w-weighted mean feature vector at its NF crops' centres)
  crops     one point per stored top crop of the layer's neurons, from its patch embedding
            (the feature vector at the crop's unit): crops that look alike to the layer land together

Layout by t-SNE (scikit-learn, Barnes-Hut, PCA initialisation; the default) or UMAP (the `umap`
extra). The vectors are L2-normalised, so the Euclidean distance both methods use is a monotone
function of the cosine distance the FAISS searches use. Coordinates are scaled to [0, 1] keeping
the aspect, and stored with the parameters, the seed, the time taken and a fingerprint of the
embeddings: a map whose embeddings changed (a re-ingest) is stale and `neuronindex map` rebuilds it;
an up-to-date map with the same parameters is kept.
"""
from __future__ import annotations

import json
import time

import numpy as np
from tqdm import tqdm

from neuronindex import store
from neuronindex.errors import LayerError, NotFoundError, UsageError, did_you_mean
from neuronindex.nets.layers import stored_names
from neuronindex.query.maps import SPACES
from neuronindex.query.reader import Reader
from neuronindex.science.layout import METHODS, layout
from neuronindex.settings import default
from neuronindex.store import execute, next_id
from neuronindex.store.vectors import fingerprint, rows
from neuronindex.store.writer import insert


def make_maps(index_dir, layers: list[str] | None = None, model: str | None = None, spaces=("neurons",),
        method: str = "tsne", seed: int = 0, perplexity: float | None = None, neighbors: int | None = None,
        force: bool = False, progress: bool = True, wait: bool = True) -> list[dict]:
    """Make (or keep, when up to date with the same parameters) the maps of the stored layers (all,
    or those named) in the given spaces, publishing each as it is made. Returns one row per map."""

    for s in spaces:
        if s not in SPACES:
            raise UsageError(f"unknown map space {s!r}; use neurons (prototype embeddings) or crops (patch embeddings)")
    if method not in METHODS:
        raise UsageError(f"unknown map method {method!r}; use tsne or umap")
    with Reader(index_dir) as idx:
        targets = _layers(idx, model, layers)
        work, report = [], []
        for model_id, mname, lay in targets:
            for space in spaces:
                ids, vectors = rows(idx.con, SPACES[space], lay["id"])
                fp = fingerprint(ids, vectors)
                stored = idx.con.execute("SELECT fingerprint, method, seed, params FROM maps WHERE layer_id = ? AND "
                                         "space = ?", [lay["id"], space]).fetchone()
                same = stored is not None and stored[0] == fp and stored[1] == method and stored[2] == seed and \
                    _asked(json.loads(stored[3]), perplexity, neighbors)
                if len(ids) == 0:
                    report.append({"model": mname, "layer": lay["name"], "space": space, "points": 0, "status": "empty"})
                elif same and not force:
                    report.append({"model": mname, "layer": lay["name"], "space": space, "points": len(ids),
                                   "status": "up to date"})
                else:
                    work.append((model_id, mname, lay, space, ids, vectors, fp))
    bar = tqdm(work, unit="map", desc="map", disable=not progress or not work, dynamic_ncols=True)
    for model_id, mname, lay, space, ids, vectors, fp in bar:
        bar.set_postfix_str(f"{lay['name']} {space} ({len(ids)} points)")
        t0 = time.perf_counter()
        xy, params = layout(vectors, method, seed, perplexity, neighbors)
        seconds = time.perf_counter() - t0
        # published one by one: an interrupted run over many layers keeps the maps already made
        _publish(index_dir, [(model_id, lay, space, ids, xy, params, fp, seconds)], method, seed, wait)
        report.append({"model": mname, "layer": lay["name"], "space": space, "points": len(ids),
                       "status": "made", "seconds": round(seconds, 2)})
    return report


def _asked(stored: dict, perplexity, neighbors) -> bool:
    """Whether stored parameters are the ones asked for (None: the setting's default)."""
    if stored.get("method") == "tsne":
        want = float(perplexity if perplexity is not None else default("map_perplexity"))
        return stored.get("asked") == want
    if stored.get("method") == "umap":
        return stored.get("asked") == int(neighbors if neighbors is not None else default("map_neighbors"))
    return True


def _layers(idx, model: str | None, layers: list[str] | None) -> list[tuple]:
    models = idx.model_list()
    if model is not None and model not in {m["name"] for m in models}:

        raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, [m['name'] for m in models])}")

    out, seen, every = [], set(), []
    for m in models:
        if model is not None and m["name"] != model:
            continue
        rows = idx.layer_list(m["name"])
        every += [r["name"] for r in rows]
        for r in rows:
            names = stored_names(r)
            if layers is None or names & set(layers):
                out.append((m["id"], m["name"], r))
                seen |= names
    missing = [name for name in layers or [] if name not in seen]
    if missing:

        raise LayerError(f"no stored layer {missing[0]!r}{did_you_mean(missing[0], every)}; stored layers: "
                         f"{', '.join(every) or 'none'}")
    return out


def _publish(index_dir, made, method: str, seed: int, wait: bool) -> None:
    with store.staged(index_dir, wait=wait, small=True, search=False) as con:
        for model_id, lay, space, ids, xy, params, fp, seconds in made:
            old = execute(con, "SELECT id FROM maps WHERE layer_id = ? AND space = ?", [lay["id"], space])
            for (mid,) in old:
                execute(con, "DELETE FROM map_points WHERE map_id = ?", [mid])
                execute(con, "DELETE FROM maps WHERE id = ?", [mid])
            mid = next_id(con, "maps")
            insert(con, "maps", {"id": [mid], "model_id": [model_id], "layer_id": [lay["id"]], "space": [space],
                                 "method": [method], "params": [json.dumps(params)], "seed": [seed],
                                 "fingerprint": [fp], "n_points": [len(ids)], "seconds": [seconds],
                                 "created": [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())]})
            insert(con, "map_points", {"map_id": np.full(len(ids), mid), "neuron_id": ids[:, 0],
                                       "rank": ids[:, 1] if space == "crops" else [None] * len(ids),
                                       "x": xy[:, 0], "y": xy[:, 1]})


