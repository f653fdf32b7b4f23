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
import warnings

import numpy as np

from neuronindex.errors import NotFoundError, UsageError
from neuronindex.settings import default

SPACES = {"neurons": "prototype", "crops": "patch"}
METHODS = ("tsne", "umap")


def layout(vectors: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float | None = None,
           neighbors: int | None = None) -> tuple[np.ndarray, dict]:
    """((n, 2) coordinates in [0, 1], the parameters used) of a map of the rows of `vectors`."""
    if method not in METHODS:
        raise UsageError(f"unknown map method {method!r}; use tsne or umap")
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if n < 4:  # too few points for a neighbourhood: a line in the given order
        return _scaled(np.column_stack([np.arange(n, dtype=float), np.zeros(n)])), {"method": "line"}
    if method == "tsne":
        from sklearn.manifold import TSNE

        p = float(perplexity if perplexity is not None else default("map_perplexity"))
        if p <= 0:
            raise UsageError(f"--perplexity must be above 0, not {p:g}")
        asked, p = p, min(p, (n - 1) / 3)  # scikit-learn needs perplexity < n; a third keeps it local
        params = {"method": "tsne", "asked": asked, "perplexity": p, "init": "pca", "learning_rate": "auto",
                  "max_iter": 1000, "angle": 0.5}
        model = TSNE(n_components=2, perplexity=p, init="pca", learning_rate="auto", random_state=seed,
                     n_jobs=-1, max_iter=1000, angle=0.5)
        xy = model.fit_transform(x)
        params["kl_divergence"] = float(model.kl_divergence_)
    else:
        try:
            import umap
        except ImportError:
            raise UsageError("UMAP maps need the umap extra: pip install 'neuronindex[umap]' (or use --method tsne)") \
                from None
        k = int(neighbors if neighbors is not None else default("map_neighbors"))
        if k < 2:
            raise UsageError(f"--neighbors must be at least 2, not {k}")
        asked, k = k, min(k, n - 1)
        params = {"method": "umap", "asked": asked, "n_neighbors": k, "min_dist": 0.1, "init": "spectral"}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            xy = umap.UMAP(n_neighbors=k, min_dist=0.1, random_state=seed, n_jobs=1).fit_transform(x)
        if any("Spectral initialisation failed" in str(w.message) for w in caught):
            # disconnected neighbourhoods (identical crops of one image under several neurons):
            # UMAP falls back to a random start, which the parameters record instead of a warning
            params["init"] = "random (the spectral start failed)"
    return _scaled(np.asarray(xy, dtype=float)), params


def _scaled(xy: np.ndarray) -> np.ndarray:
    """Into [0, 1] with one scale for both axes, centred on the shorter one."""
    lo, hi = xy.min(0), xy.max(0)
    span = float((hi - lo).max()) or 1.0
    out = (xy - lo) / span
    return out + (1 - (hi - lo) / span) / 2


def run(index_dir, layers: list[str] | None = None, model: str | None = None, spaces=("neurons",),
        method: str = "tsne", seed: int = 0, perplexity: float | None = None, neighbors: int | None = None,
        force: bool = False, progress: bool = True, wait: bool = True) -> list[dict]:
    """Make (or keep, when up to date with the same parameters) the maps of the stored layers (all,
    or those named) in the given spaces, publishing each as it is made. Returns one row per map."""
    from tqdm import tqdm

    from neuronindex import api
    from neuronindex.store.vectors import fingerprint, rows

    for s in spaces:
        if s not in SPACES:
            raise UsageError(f"unknown map space {s!r}; use neurons (prototype embeddings) or crops (patch embeddings)")
    if method not in METHODS:
        raise UsageError(f"unknown map method {method!r}; use tsne or umap")
    with api.Index(index_dir) as idx:
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
    models = idx.models().rows()
    if model is not None and model not in {m["name"] for m in models}:
        from neuronindex.errors import did_you_mean

        raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, [m['name'] for m in models])}")
    from neuronindex.nets.layers import stored_names

    out, seen, every = [], set(), []
    for m in models:
        if model is not None and m["name"] != model:
            continue
        rows = idx.layers(m["name"]).rows()
        every += [r["name"] for r in rows]
        for r in rows:
            names = stored_names(r)
            if layers is None or names & set(layers):
                out.append((m["id"], m["name"], r))
                seen |= names
    missing = [name for name in layers or [] if name not in seen]
    if missing:
        from neuronindex.errors import LayerError, did_you_mean

        raise LayerError(f"no stored layer {missing[0]!r}{did_you_mean(missing[0], every)}; stored layers: "
                         f"{', '.join(every) or 'none'}")
    return out


def _publish(index_dir, made, method: str, seed: int, wait: bool) -> None:
    from neuronindex import store
    from neuronindex.store import execute, next_id
    from neuronindex.store.writer import insert

    with store.staged(index_dir, wait=wait) as con:
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


def points(idx, model: str, layer: str, space: str = "neurons") -> dict:
    """A stored map with its points joined to their neurons (and crops' images): the gallery's and
    the API's map. Says whether it is stale."""
    from neuronindex.store.vectors import fingerprint, rows

    if space not in SPACES:
        raise UsageError(f"unknown map space {space!r}; use neurons or crops")
    from neuronindex.nets.layers import stored_names

    lay = [r for r in idx.layers(model).rows() if layer in stored_names(r)]
    if not lay:
        from neuronindex.errors import LayerError

        raise LayerError(f"model {model} has no stored layer {layer!r}")
    lay = lay[0]
    found = idx.con.execute("SELECT id, method, params, seed, fingerprint, n_points, seconds, created FROM maps "
                            "WHERE layer_id = ? AND space = ?", [lay["id"], space]).fetchone()
    if found is None:
        raise NotFoundError(f"no {space} map of {model} {lay['name']} yet; make it with "
                            f"`neuronindex map INDEX --layers {lay['name']} --space {space}`")
    mid, method, params, seed, fp, n, seconds, created = found
    ids, vectors = rows(idx.con, SPACES[space], lay["id"])
    if space == "neurons":
        sql = ("SELECT p.x, p.y, n.key, n.color_label, n.color_name, n.hue_name, n.color_index, n.top_class, n.dead, n.kind "
               "FROM map_points p JOIN neuron_search n ON n.id = p.neuron_id WHERE p.map_id = ? ORDER BY p.neuron_id")
    else:
        sql = ("SELECT p.x, p.y, n.key, p.rank, c.name AS image_class, n.color_label, n.color_name, n.top_class, t.image_id "
               "FROM map_points p JOIN neuron_search n ON n.id = p.neuron_id "
               "JOIN topk t ON t.neuron_id = p.neuron_id AND t.rank = p.rank "
               "JOIN images i ON i.id = t.image_id LEFT JOIN classes c ON c.id = i.class_id "
               "WHERE p.map_id = ? ORDER BY p.neuron_id, p.rank")
    cur = idx.con.execute(sql, [mid])
    cols = [d[0] for d in cur.description]
    return {"model": model, "layer": lay["name"], "space": space, "method": method, "params": json.loads(params),
            "seed": seed, "points": n, "seconds": seconds, "created": created,
            "stale": fingerprint(ids, vectors) != fp, "columns": cols, "rows": cur.fetchall()}
