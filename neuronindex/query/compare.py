"""Two networks (or two layers of one) side by side (Yu et al. 2014 compares two CNNs layer by layer).

- `layers`: each model's per-layer summary (the gallery's: neurons, dead, sparsity, colour and
  selective share, mean class index and CSI, field size), rows aligned by relative depth (a layer's rank
  among the model's stored layers, 0 = first, 1 = deepest): every layer of the model with more
  layers gets a row, beside the other model's layer nearest in relative depth.
- `matches`: for one neuron, the neurons of the other model (or another layer) whose activations
  correlate best with its own over the probe images both ingests saw (Pearson correlation of
  the per-image activation, the "convergent learning" measure of Li et al. 2016).
- `layer_similarity`: per pair of layers, the mean over the first layer's neurons of their best
  correlation with a neuron of the second.

"Shared" probe images: the probe sample of an ingest is the first `probe_size` images of its
image source in order; two ingests share an image when both stored the same path (the same
file; for torchvision datasets the same dataset and index). Ingest both models over the same
folder (or manifest) and they share min(their probe sizes, the images) images; at least
MIN_SHARED are needed.
"""
from __future__ import annotations

import numpy as np

from neuronindex.checks import check_k
from neuronindex.errors import NotFoundError, UsageError

MIN_SHARED = 10


def depths(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)


def layers(idx, a: str, b: str) -> list[dict]:
    """Aligned per-layer rows: {depth, a: summary row or None, b: summary row or None}."""
    idx.model_row(a), idx.model_row(b)
    rows = {m: idx.summary_rows(m) for m in (a, b)}
    fields = {(r["model"], r["name"]): r for m in (a, b) for r in idx.layer_list(m)}
    for m, rs in rows.items():
        for r, d in zip(rs, depths(len(rs))):
            r["depth"] = float(d)
            r["rf_size"] = fields[(m, r["layer"])]["rf_size"]
            r["dead_share"] = r["dead"] / r["neurons"] if r["neurons"] else None
    long, short = (a, b) if len(rows[a]) >= len(rows[b]) else (b, a)
    out = []
    for r in rows[long]:
        near = min(rows[short], key=lambda s: (abs(s["depth"] - r["depth"]), s["depth"])) if rows[short] else None
        out.append({"depth": r["depth"], long: r, short: near})
    return [{"depth": o["depth"], "a": o[a], "b": o[b]} for o in out]


def _probe(idx, model: str, layer: str | None = None) -> tuple[list[dict], np.ndarray, list[str]]:
    """(neuron rows, (neurons, probe images) activations, the probe images' paths) of a model's
    channels (one layer's, or all), in the probe order of its ingest."""
    m = idx.model_row(model)
    where, args = "", [m["id"]]
    if layer is not None:
        where, args = " AND n.layer_id = ?", [m["id"], idx.layer_rows(model, layer)[0]["id"]]
    rows = idx.rows("SELECT n.id, n.key, l.name AS layer, n.channel, n.dead, n.ingest_id, p.activations "
                     "FROM neurons n JOIN layers l ON l.id = n.layer_id JOIN probe p ON p.neuron_id = n.id "
                     f"WHERE n.model_id = ? AND n.kind = 'channel'{where} ORDER BY l.position, n.channel", args)
    if not rows:
        raise NotFoundError(f"model {model} has no probe activations stored (its ingest kept no probe sample)")
    ingests = {r["ingest_id"] for r in rows}
    ingest = max(ingests)  # one model, one ingest (a re-ingest replaces the model)
    rows = [r for r in rows if r["ingest_id"] == ingest]
    # a file is the same file whatever dataset row names it; a torchvision image is an index into its dataset
    paths = [f"{source}::{path}" if path.startswith("torchvision:") else path for path, source in idx.con.execute(
        "SELECT i.path, d.source FROM probe_images q JOIN images i ON i.id = q.image_id "
        "JOIN datasets d ON d.id = i.dataset_id WHERE q.ingest_id = ? ORDER BY q.rank", [ingest]).fetchall()]
    acts = np.array([r.pop("activations") for r in rows], dtype=np.float64)
    return rows, acts, paths


def _shared(paths_a: list[str], paths_b: list[str]) -> tuple[np.ndarray, np.ndarray]:
    where_b = {p: i for i, p in enumerate(paths_b)}
    ia = [i for i, p in enumerate(paths_a) if p in where_b]
    return np.array(ia, dtype=int), np.array([where_b[paths_a[i]] for i in ia], dtype=int)


def _standardise(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (a constant row, e.g. a dead neuron, stays zero)."""
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 1e-12, x / np.maximum(norm, 1e-12), 0.0)


def _aligned(idx, a: str, b: str, layer_a=None, layer_b=None):
    rows_a, acts_a, paths_a = _probe(idx, a, layer_a)
    rows_b, acts_b, paths_b = _probe(idx, b, layer_b)
    ia, ib = _shared(paths_a, paths_b)
    if len(ia) < MIN_SHARED:
        raise UsageError(f"{a} and {b} share {len(ia)} probe images (at least {MIN_SHARED} are needed): ingest both "
                         "over the same image folder or manifest, whose first probe_size images form the probe sample")
    return rows_a, _standardise(acts_a[:, ia]), rows_b, _standardise(acts_b[:, ib]), len(ia)


def matches(idx, key: str, other: str, k: int = 10, layer: str | None = None) -> dict:
    """The neurons of model `other` (one layer of it, or all) whose probe activations correlate best
    with neuron `key`'s over the probe images both saw: {key, model, other, shared, rows:
    [{key, layer, channel, correlation, dead}] best first}. `other` may be the neuron's own model
    (then the neuron itself is left out)."""

    check_k(k)
    n = idx.neuron_row(key)
    model, own_layer = n["model"], n["layer"]
    rows_a, za, rows_b, zb, shared = _aligned(idx, model, other, own_layer, layer)
    i = next((j for j, r in enumerate(rows_a) if r["id"] == n["id"]), None)
    if i is None:
        raise NotFoundError(f"neuron {key} has no probe activations (directions have none)")
    corr = zb @ za[i]
    order = [j for j in np.argsort(-corr, kind="stable") if rows_b[j]["id"] != n["id"]][:k]
    out = [{"key": rows_b[j]["key"], "layer": rows_b[j]["layer"], "channel": rows_b[j]["channel"],
            "correlation": float(corr[j]), "dead": bool(rows_b[j]["dead"])} for j in order]
    return {"key": key, "model": model, "other": other, "shared": shared, "rows": out}


def layer_similarity(idx, a: str, b: str) -> dict:
    """{layers_a, layers_b, shared, matrix}: matrix[i][j] = the mean, over the live neurons of layer
    i of `a`, of their best correlation with a neuron of layer j of `b` (1: every neuron has an
    exact linear twin there)."""
    rows_a, za, rows_b, zb, shared = _aligned(idx, a, b)
    corr = za @ zb.T
    if a == b:
        np.fill_diagonal(corr, -np.inf)  # a neuron is not its own match
    la = list(dict.fromkeys(r["layer"] for r in rows_a))
    lb = list(dict.fromkeys(r["layer"] for r in rows_b))
    live_a = np.array([not r["dead"] for r in rows_a])
    in_a = np.array([r["layer"] for r in rows_a])
    in_b = np.array([r["layer"] for r in rows_b])
    matrix = []
    for x in la:
        sel = (in_a == x) & live_a
        line = []
        for y in lb:
            block = corr[np.ix_(sel, in_b == y)]
            line.append(float(np.mean(block.max(1))) if block.size and np.isfinite(block.max(1)).all() else None)
        matrix.append(line)
    return {"a": a, "b": b, "layers_a": la, "layers_b": lb, "shared": shared, "matrix": matrix}
