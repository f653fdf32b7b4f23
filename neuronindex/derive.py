"""Everything computed after pass 1: pass 2 (crops, Neuron Features), selectivity, embeddings.

`run_all` returns {"writers": [callable(con, context), ...]}: each writer stores its part in
the staged database during publish, so a run publishes everything or nothing.
"""
from __future__ import annotations

import time

import numpy as np

from . import features as features_mod
from .store import execute
from .writer import insert


def run_all(run, results: list[dict], progress: bool = True, timings: dict | None = None) -> dict:
    timings = timings if timings is not None else {}
    writers = []
    if any(s.layer.field is None for s in run.selections):
        if progress:
            print("no receptive fields for this model (TorchScript): skipping Neuron Features")
        return {"writers": writers}
    t0 = time.time()
    plan, owners = features_mod.plan_from_results(run.selections, results, run.params.nf_threshold, run.params.nf_max)
    feats = features_mod.compute(plan, run.images, run.loaded.preprocessing, run.params.workers,
                                 progress=progress)
    timings["pass2"] = time.time() - t0
    t0 = time.time()
    from .extract import Extractor

    extractor = Extractor(run.loaded, [s.layer.name for s in run.selections], run.params.device)
    sr = features_mod.self_response(extractor, run.selections, owners, feats, [r["act_max"] for r in results],
                                    run.loaded.preprocessing, progress=progress)
    timings["self_response"] = time.time() - t0
    writers.append(lambda con, ctx: write_features(con, ctx, owners, feats, sr, run.params))
    return {"writers": writers, "features": feats, "owners": owners, "plan": plan}


def neuron_id_array(ctx, owners) -> np.ndarray:
    return np.array([ctx["neuron_ids"][li][c] for li, c in owners], dtype=np.int64)


def write_features(con, ctx, owners, feats, self_resp, params) -> None:
    ids = neuron_id_array(ctx, owners)
    execute(con, "DELETE FROM neuron_features WHERE neuron_id IN (SELECT id FROM neurons WHERE ingest_id = ?)",
            [ctx["ingest_id"]])
    rows = {k: [] for k in ("neuron_id", "n_used", "threshold", "nf_max", "height", "width", "nf_png", "std",
                            "crop_std_mean", "sprite_png", "sprite_n", "sprite_thumb")}
    for n, f in enumerate(feats):
        if f is None:
            continue
        h, w = f.valid.shape
        rows["neuron_id"].append(int(ids[n]))
        rows["n_used"].append(f.n_used)
        rows["threshold"].append(float(params.nf_threshold))
        rows["nf_max"].append(int(params.nf_max))
        rows["height"].append(h)
        rows["width"].append(w)
        rows["nf_png"].append(f.png() if f.n_used else None)
        rows["std"].append(f.std.ravel())
        rows["crop_std_mean"].append(float(np.nanmean(f.std)) if np.isfinite(f.std).any() else None)
        rows["sprite_png"].append(features_mod.png_bytes(f.sprite) if f.sprite is not None else None)
        rows["sprite_n"].append(f.sprite_n)
        rows["sprite_thumb"].append(int(f.sprite.shape[0]) if f.sprite is not None else None)
    _insert_features(con, rows)
    n_used = np.array([f.n_used if f is not None else 0 for f in feats])
    execute(con, "CREATE TEMP TABLE IF NOT EXISTS _nf_update (neuron_id INTEGER, nf_n INTEGER, nf_self_response DOUBLE)")
    execute(con, "DELETE FROM _nf_update")
    insert(con, "_nf_update", {"neuron_id": ids, "nf_n": n_used, "nf_self_response": self_resp})
    execute(con, "UPDATE neurons SET nf_n = u.nf_n, nf_self_response = u.nf_self_response "
                 "FROM _nf_update u WHERE neurons.id = u.neuron_id")
    execute(con, "UPDATE topk SET in_nf = (norm_activation >= ? AND rank <= ?) "
                 "WHERE neuron_id IN (SELECT neuron_id FROM _nf_update)", [float(params.nf_threshold), int(params.nf_max)])


def _insert_features(con, rows) -> None:
    import pyarrow as pa

    if not rows["neuron_id"]:
        return
    types = {"nf_png": pa.binary(), "sprite_png": pa.binary(), "std": pa.list_(pa.float32())}
    table = pa.table({k: pa.array(v, type=types.get(k), from_pandas=True) for k, v in rows.items()})
    con.register("_features", table)
    try:
        cols = ", ".join(rows)
        execute(con, f"INSERT INTO neuron_features ({cols}) SELECT {cols} FROM _features")
    finally:
        con.unregister("_features")


def results_from_index(con, ingest_id: int) -> tuple[list[str], list[dict], list[np.ndarray]]:
    """Rebuild the pass-1 results needed by pass 2 and the indexes from a stored ingest.

    Returns (layer names as selected, per-layer results, per-layer neuron ids).
    """
    layers = execute(con, "SELECT id, name, channels FROM layers WHERE ingest_id = ? ORDER BY position", [ingest_id])
    k = int(execute(con, "SELECT max(rank) FROM topk t JOIN neurons n ON n.id = t.neuron_id WHERE n.ingest_id = ?",
                    [ingest_id])[0][0] or 1)
    names, results, ids = [], [], []
    for layer_id, name, channels in layers:
        neuron_rows = execute(con, "SELECT id, channel, act_max FROM neurons WHERE layer_id = ? ORDER BY channel", [layer_id])
        nid = np.array([r[0] for r in neuron_rows])
        act_max = np.array([np.nan if r[2] is None else r[2] for r in neuron_rows], dtype=float)
        top = execute(con, "SELECT n.channel, t.rank, i.position, t.activation, t.y, t.x FROM topk t "
                           "JOIN neurons n ON n.id = t.neuron_id JOIN images i ON i.id = t.image_id "
                           "WHERE n.layer_id = ?", [layer_id])
        vals = np.full((channels, k), -np.inf)
        pos = np.full((channels, k), -1, dtype=np.int64)
        ys = np.zeros((channels, k), dtype=np.int64)
        xs = np.zeros((channels, k), dtype=np.int64)
        if top:
            t = np.array(top, dtype=float)
            c, r = t[:, 0].astype(int), t[:, 1].astype(int) - 1
            pos[c, r], vals[c, r], ys[c, r], xs[c, r] = t[:, 2].astype(np.int64), t[:, 3], t[:, 4], t[:, 5]
        names.append(name)
        results.append({"top_values": vals, "top_ids": pos, "top_y": ys, "top_x": xs, "act_max": act_max})
        ids.append(nid)
    return names, results, ids


def recompute(index_dir, model: str | None = None, progress: bool = True, **overrides) -> list[dict]:
    """Recompute pass 2 and the derived indexes of stored ingests (e.g. with another NF threshold)."""
    import json

    from . import store
    from .errors import NotFoundError, did_you_mean
    from .ingest import IngestParams, prepare
    from .models import Preprocessing

    con = store.connect(index_dir)
    try:
        rows = execute(con, "SELECT i.id, m.name, m.spec, m.weights, m.preprocessing, i.parameters, d.source, "
                            "m.fingerprint, d.fingerprint FROM ingests i JOIN models m ON m.id = i.model_id "
                            "JOIN datasets d ON d.id = i.dataset_id ORDER BY i.id")
        if model is not None:
            known = [r[1] for r in rows]
            rows = [r for r in rows if r[1] == model]
            if not rows:
                raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, known) or '; it has ' + ', '.join(known)}")
        jobs = []
        for ingest_id, name, spec, weights, pre, params, source, model_fp, data_fp in rows:
            names, results, ids = results_from_index(con, ingest_id)
            jobs.append((ingest_id, name, spec, weights, pre, json.loads(params), source, model_fp, data_fp,
                         names, results, ids))
    finally:
        con.close()
    done = []
    for ingest_id, name, spec, weights, pre, params, source, model_fp, data_fp, names, results, ids in jobs:
        params = {**params, **{k: v for k, v in overrides.items() if v is not None}}
        p = IngestParams(**{k: v for k, v in params.items() if k in IngestParams.__dataclass_fields__})
        p.shard = None
        run = prepare(spec, source, names, weights=weights, name=name, preprocessing=Preprocessing.from_json(pre), params=p)
        from .errors import IngestError

        if run.meta["model_fingerprint"] != model_fp:
            raise IngestError(f"the weights of {name} ({weights}) changed since it was ingested; ingest it again")
        if run.meta["data_fingerprint"] != data_fp:
            raise IngestError(f"the images of {source} changed since {name} was ingested; ingest it again")
        extra = run_all(run, results, progress=progress)
        ctx = {"ingest_id": ingest_id, "neuron_ids": ids}
        with store.staged(index_dir) as wcon:
            for writer in extra["writers"]:
                writer(wcon, ctx)
            execute(wcon, "UPDATE ingests SET parameters = ? WHERE id = ?", [json.dumps(params), ingest_id])
        done.append({"model": name, "neurons": int(sum(len(i) for i in ids))})
    return done
