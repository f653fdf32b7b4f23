"""What a job writes into the staged database: a dataset and its classes, an ingest's models, layers
and units with their lists, statistics, histograms and directions, and the ids under which they
were stored (`StoredIngest`) for the derived tables of pass 2."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from neuronindex.science.directions import extended_field
from neuronindex.science.stats import UnitResults, bucket_values, histogram
from neuronindex.settings import default
from neuronindex.store import execute, next_id
from neuronindex.store.writer import insert, run_many
from neuronindex.version import __version__


def _unique_name(con, name: str) -> str:
    taken = {r[0] for r in execute(con, "SELECT name FROM models")}
    if name not in taken:
        return name
    i = 2
    while f"{name}-{i}" in taken:
        i += 1
    return f"{name}-{i}"


def write_dataset(con, images) -> tuple[int, int, dict[str, int]]:
    """Dataset, classes and images rows (reused when the same collection is already stored).

    Returns (dataset_id, first image id, class name -> class id). Image ids are first + position.
    """
    fp = images.fingerprint()
    row = (execute(con, "SELECT id FROM datasets WHERE fingerprint = ? AND source = ?", [fp, images.source]) or [None])[0]
    if row:
        dataset_id = row[0]
        first = execute(con, "SELECT min(id) - min(position) FROM images WHERE dataset_id = ?", [dataset_id])[0][0]
        classes = dict(execute(con, "SELECT name, id FROM classes WHERE dataset_id = ?", [dataset_id]))
        return dataset_id, int(first or 0), classes
    dataset_id = next_id(con, "datasets")
    execute(con, "INSERT INTO datasets (id, name, source, kind, fingerprint, n_images, n_problems, labels, class_list) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [dataset_id, images.name, images.source, images.kind, fp, len(images.images), len(images.problems),
             images.labels, images.class_list])
    class_id = {}
    base = next_id(con, "classes")
    names = sorted(set(images.classes) | set(images.leaf_classes))
    for i, n in enumerate(names):
        class_id[n] = base + i
    leaves = set(images.leaf_classes)
    rows = {"id": [], "dataset_id": [], "name": [], "wnid": [], "parent_id": [], "depth": [], "is_leaf": []}
    for n in names:
        node = images.classes.get(n)
        parent = node.parent if node else None
        rows["id"].append(class_id[n])
        rows["dataset_id"].append(dataset_id)
        rows["name"].append(n)
        rows["wnid"].append(node.wnid if node else None)
        rows["parent_id"].append(class_id.get(parent) if parent else None)
        rows["depth"].append(len(images.ancestors(n)))
        rows["is_leaf"].append(n in leaves)
    insert(con, "classes", rows)
    first = next_id(con, "images")
    recs = images.images
    insert(con, "images", {
        "id": np.arange(first, first + len(recs)) if recs else np.zeros(0, np.int64),
        "dataset_id": [dataset_id] * len(recs),
        "position": [r.position for r in recs],
        "path": [r.path for r in recs],
        "class_id": [class_id.get(r.label) if r.label else None for r in recs],
    })
    return dataset_id, first - (recs[0].position if recs else 0), class_id


def sync_classes(con, dataset_id: int, images) -> int:
    """Bring a stored dataset's classes up to the names and hierarchy `images` has now (WordNet
    installed, or the bundled ImageNet-1k hierarchy, since the ingest): classes are matched by
    WordNet id, else by name, and keep their ids (images and neuron rows still point at them);
    missing ancestors are added; parents, depths and leaf flags are rewritten. Returns the
    number of classes added or renamed."""
    stored = execute(con, "SELECT id, name, wnid FROM classes WHERE dataset_id = ?", [dataset_id])
    by_wnid = {wnid: (cid, name) for cid, name, wnid in stored if wnid}
    by_name = {name: (cid, name) for cid, name, _ in stored}
    names = sorted(set(images.classes) | set(images.leaf_classes))
    class_id, added, renamed = {}, [], 0
    for n in names:
        node = images.classes.get(n)
        found = (by_wnid.get(node.wnid) if node is not None and node.wnid else None) or by_name.get(n)
        if found is None:
            added.append(n)
        else:
            class_id[n] = found[0]
            renamed += found[1] != n
    base = next_id(con, "classes")
    class_id.update({n: base + i for i, n in enumerate(added)})
    leaves = set(images.leaf_classes)
    rows = {"id": [], "dataset_id": [], "name": [], "wnid": [], "parent_id": [], "depth": [], "is_leaf": []}
    for n in names:
        node = images.classes.get(n)
        parent = node.parent if node else None
        for key, value in zip(rows, (class_id[n], dataset_id, n, node.wnid if node else None,
                                     class_id.get(parent) if parent else None, len(images.ancestors(n)), n in leaves)):
            rows[key].append(value)
    execute(con, "CREATE TEMP TABLE IF NOT EXISTS _class_sync AS SELECT * FROM classes LIMIT 0")
    execute(con, "DELETE FROM _class_sync")
    insert(con, "_class_sync", rows)
    execute(con, "UPDATE classes SET name = s.name, wnid = s.wnid, parent_id = s.parent_id, depth = s.depth, "
                 "is_leaf = s.is_leaf FROM _class_sync s WHERE classes.id = s.id")
    execute(con, "INSERT INTO classes SELECT * FROM _class_sync WHERE id >= ?", [base])
    return len(added) + renamed


def write_units(con, res: UnitResults, ids, channels, key_prefix: str, model_id: int, layer_id: int, ingest_id: int,
                f, first_image: int, label_class_ids) -> None:
    """Rows of a layer's units (neurons and directions alike): `neurons`, `topk`, `bottomk`,
    `curves`, `class_means`, `probe`. res and f (their receptive fields) hold exactly these units;
    `channels` are their indexes in the layer's map (channels, then directions)."""
    C = len(ids)
    units = res.unit if res.unit is not None else [str(c) for c in channels]
    kinds = res.kind if res.kind is not None else ["channel"] * C
    if f is not None:
        sizes = f.sizes()
        rf_h, rf_w = sizes[:, 0].astype(np.int64), sizes[:, 1].astype(np.int64)
        y0 = np.where(np.isfinite(f.start[:, 0]), f.start[:, 0], 0).astype(np.int64)
        x0 = np.where(np.isfinite(f.start[:, 1]), f.start[:, 1], 0).astype(np.int64)
    else:
        rf_h = rf_w = y0 = x0 = np.full(C, None, dtype=object)
    insert(con, "neurons", {
        "id": ids, "key": [f"{key_prefix}{u}" for u in units], "kind": list(kinds), "unit": list(units),
        "act_min": res.act_min if res.act_min is not None else np.full(C, np.nan),
        "model_id": np.full(C, model_id), "layer_id": np.full(C, layer_id), "ingest_id": np.full(C, ingest_id),
        "channel": np.asarray(channels), "rf_h": rf_h, "rf_w": rf_w, "rf_y0": y0, "rf_x0": x0,
        "n_images": np.full(C, res.count), "act_max": res.act_max, "act_mean": res.act_mean,
        "act_std": res.act_std, "sparsity": res.sparsity, "dead": res.dead, "auc": res.auc,
        "weak": res.weak if res.weak is not None else np.zeros(C, dtype=bool),
    })
    # top-k rows, valid entries only
    vals, top_ids = res.top_values, res.top_ids
    ch, rank = np.nonzero(np.isfinite(vals))
    ty, tx = res.top_y[ch, rank].astype(np.int64), res.top_x[ch, rank].astype(np.int64)
    if f is not None:
        bx0, by0, bx1, by1 = f.boxes(ch, ty, tx).T
    else:
        bx0 = by0 = bx1 = by1 = np.full(len(ch), None, dtype=object)
    amax = res.act_max[ch]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(amax > 0, vals[ch, rank] / amax, np.nan)
    insert(con, "topk", {
        "neuron_id": ids[ch], "rank": rank + 1, "image_id": first_image + top_ids[ch, rank],
        "activation": vals[ch, rank], "norm_activation": norm, "y": ty, "x": tx,
        "box_x0": bx0, "box_y0": by0, "box_x1": bx1, "box_y1": by1,
    })
    write_bottom(con, ids, res, f, first_image)
    insert(con, "curves", {"neuron_id": ids, "curve": res.curve})
    if len(label_class_ids):
        means, counts = res.class_means, res.class_count
        cc, nn_ = np.meshgrid(np.arange(len(label_class_ids)), np.arange(C), indexing="ij")
        keep = counts[cc.ravel()] > 0
        spatial = res.class_means_spatial
        insert(con, "class_means", {
            "neuron_id": ids[nn_.ravel()][keep], "class_id": label_class_ids[cc.ravel()][keep],
            "mean_activation": means.ravel()[keep], "n_images": counts[cc.ravel()][keep],
            "mean_spatial": spatial.ravel()[keep] if spatial is not None else np.full(int(keep.sum()), np.nan),
        })
    if len(res.probe_ids):
        insert(con, "probe", {"neuron_id": ids, "activations": res.probe.T.copy()})
    write_histograms(con, ids, res)


def write_histograms(con, ids, res) -> None:
    """`activation_histograms` rows of one layer's units (when pass 1 streamed histograms): equal
    bins from the exact extremes where known (a_max; the lowest bottom value), else the buckets'."""

    hist = res.hist
    if hist is None:
        return
    mids = bucket_values()
    low = res.bottom_values
    rows = {k: [] for k in ("neuron_id", "n_images", "density", "share_zero", "edges", "counts", "bucket_values",
                            "bucket_counts")}
    for i, counts in enumerate(hist):
        lo = low[i, 0] if low is not None and low.shape[1] else None
        h = histogram(counts, lo, res.act_max[i], default("hist_bins"))
        if not h["n"]:
            continue
        used = np.nonzero(counts)[0]
        for k, v in (("neuron_id", int(ids[i])), ("n_images", h["n"]), ("density", h["density"]),
                     ("share_zero", h["share_zero"]), ("edges", h["edges"]), ("counts", h["counts"]),
                     ("bucket_values", mids[used].tolist()), ("bucket_counts", counts[used].tolist())):
            rows[k].append(v)
    if rows["neuron_id"]:
        insert(con, "activation_histograms", rows, types={"edges": pa.list_(pa.float64()), "counts": pa.list_(pa.int64()),
                                                          "bucket_values": pa.list_(pa.float64()),
                                                          "bucket_counts": pa.list_(pa.int64())})


def write_bottom(con, ids, res, field, first_image) -> None:
    """`bottomk` rows of one layer's units (valid entries only)."""
    if res.bottom_values is None:
        return
    vals = res.bottom_values
    ch, rank = np.nonzero(np.isfinite(vals))
    ys = (res.bottom_y if res.bottom_y is not None else np.full(vals.shape, -1))[ch, rank].astype(np.int64)
    xs = (res.bottom_x if res.bottom_x is not None else np.full(vals.shape, -1))[ch, rank].astype(np.int64)
    located = ys >= 0
    boxes = field.boxes(ch, np.maximum(ys, 0), np.maximum(xs, 0)).astype(float) if field is not None and len(ch) \
        else np.full((len(ch), 4), np.nan)
    boxes[~located] = np.nan
    insert(con, "bottomk", {
        "neuron_id": ids[ch], "rank": rank + 1, "image_id": first_image + res.bottom_ids[ch, rank],
        "activation": vals[ch, rank], "y": np.where(located, ys, np.nan), "x": np.where(located, xs, np.nan),
        "box_x0": boxes[:, 0], "box_y0": boxes[:, 1], "box_x1": boxes[:, 2], "box_y1": boxes[:, 3],
    })


def write_directions(con, ids, layer_id: int, d, pooled_var) -> None:
    """`directions` rows of one layer (ids: their unit rows in `neurons`, in order)."""
    rows = d.rows()
    cols = {k: [] for k in ("neuron_id", "layer_id", "kind", "name", "ordinal", "filter", "pooling", "variance",
                            "explained", "singular_value", "n_images", "pooled_var", "vector", "weights", "offset")}
    for j, (nid, r) in enumerate(zip(ids, rows)):
        cols["neuron_id"].append(int(nid))
        cols["layer_id"].append(int(layer_id))
        cols["pooled_var"].append(float(pooled_var[j]) if pooled_var is not None else None)
        for k in ("kind", "name", "ordinal", "filter", "pooling", "variance", "explained", "singular_value",
                  "n_images", "vector", "weights", "offset"):
            cols[k].append(r[k])

    cols["offset_"] = cols.pop("offset")
    con.register("_dirs", pa.table({**{k: v for k, v in cols.items() if k not in ("vector", "weights")},
                                    "vector": pa.array([list(v) for v in cols["vector"]], type=pa.list_(pa.float32())),
                                    "weights": pa.array([list(v) for v in cols["weights"]], type=pa.list_(pa.float32()))}))
    try:
        execute(con, 'INSERT INTO directions (neuron_id, layer_id, kind, name, ordinal, filter, pooling, variance, explained, '
                     'singular_value, n_images, pooled_var, vector, weights, "offset") SELECT neuron_id, layer_id, kind, '
                     'name, ordinal, filter, pooling, variance, explained, singular_value, n_images, pooled_var, vector, '
                     'weights, offset_ FROM _dirs')
    finally:
        con.unregister("_dirs")


def write_dictionaries(con, layer_id: int, fits: list) -> None:
    """`dictionaries` rows of one layer: each fitted dictionary with its baselines (dictionaries.Dictionary)."""
    for f in fits:
        execute(con, "INSERT INTO dictionaries (layer_id, kind, atoms, samples, r2, r2_map, l0, clipped, r2_neurons, "
                     "r2_pca, loss, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [layer_id, f.kind, len(f), f.samples, f.r2, f.r2_map, f.l0, f.clipped, f.baselines.get("channel"),
                 f.baselines.get("pca"), [float(v) for v in f.loss], f.seconds])


def write_ingest(con, run, results: list[UnitResults], derived, timings: dict, started: float) -> dict:
    loaded = run.loaded
    dataset_id, first_image, class_ids = write_dataset(con, run.images)
    if run.problems:
        probs = sorted(run.problems.items())
        run_many(con, "UPDATE images SET problem = ? WHERE id = ?", [[reason, first_image + pos] for pos, reason in probs])
    # what the listing skipped (not images, broken links, names that are not UTF-8) and what did not decode
    execute(con, "UPDATE datasets SET n_problems = ? + (SELECT count(*) FROM images WHERE dataset_id = ? AND problem "
                 "IS NOT NULL) WHERE id = ?", [len(run.images.problems), dataset_id, dataset_id])
    model_id = next_id(con, "models")
    model_name = _unique_name(con, loaded.name)
    execute(
        con, "INSERT INTO models (id, name, spec, weights, fingerprint, num_parameters, preprocessing, provenance) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [model_id, model_name, loaded.spec, loaded.weights, run.meta["model_fingerprint"], loaded.num_parameters(),
         loaded.preprocessing.to_json(), json.dumps(loaded.provenance)])
    ingest_id = next_id(con, "ingests")
    execute(
        con, "INSERT INTO ingests (id, model_id, dataset_id, parameters, package_version, model_fingerprint, "
        "data_fingerprint, started_at, finished_at, timings, run_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [ingest_id, model_id, dataset_id, json.dumps(run.meta["params"]), __version__, run.meta["model_fingerprint"],
         run.meta["data_fingerprint"], datetime.fromtimestamp(started, timezone.utc).replace(tzinfo=None),
         datetime.now(timezone.utc).replace(tzinfo=None), json.dumps(timings), run.key(include_shard=False)])
    layer_base = next_id(con, "layers")
    neuron_base = next_id(con, "neurons")
    label_class_ids = np.array([class_ids[n] for n in run.label_names], dtype=np.int64)
    nid = neuron_base
    neuron_ids_by_layer = []
    probe_written = False

    directions = run.directions or [None] * len(run.selections)
    for li, (sel, res) in enumerate(zip(run.selections, results)):
        layer = sel.layer
        layer_id = layer_base + li
        execute(
            con, "INSERT INTO layers (id, model_id, name, node, alias, kind, position, channels, map_h, map_w, rf_size, "
            "rf_stride, rf_offset, sparsity, ingest_id, aliases, pre_activation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [layer_id, model_id, sel.name, layer.name, layer.alias, layer.kind, layer.position, layer.channels,
             layer.map_h, layer.map_w, layer.rf_size, layer.rf_stride, layer.rf_offset,
             float(np.mean(res.sparsity[:layer.channels])) if layer.channels else None, ingest_id,
             ",".join(layer.aliases) or None, layer.pre_activation])
        C = len(res.act_max)  # the layer's channels, then its directions
        ids = np.arange(nid, nid + C)
        neuron_ids_by_layer.append(ids)
        nid += C
        d = directions[li]
        f = extended_field(layer.field, len(d) if d is not None else 0)
        write_units(con, res, ids, np.arange(C), f"{model_name}/{sel.name}/", model_id, layer_id, ingest_id, f,
                    first_image, label_class_ids)
        if d is not None:
            write_directions(con, ids[layer.channels:], layer_id, d, res.pooled_var)
            if d.spectrum is not None:
                con.execute("UPDATE layers SET spectrum = ? WHERE id = ?", [d.spectrum.astype(float).tolist(), layer_id])
            write_dictionaries(con, layer_id, d.fits)
        if len(res.probe_ids) and not probe_written:
            insert(con, "probe_images", {"ingest_id": np.full(len(res.probe_ids), ingest_id),
                                         "rank": np.arange(1, len(res.probe_ids) + 1),
                                         "image_id": first_image + res.probe_ids})
            probe_written = True
    if derived is not None:

        derived.write(con, StoredIngest(ingest_id, neuron_ids_by_layer))
    return {
        "index": None, "model": model_name, "model_id": model_id, "ingest_id": ingest_id,
        "images": len(run.positions()) - len([p for p in run.problems if p in set(run.positions())]),
        "problems": len(run.problems), "layers": [s.name for s in run.selections],
        "neurons": int(sum(s.layer.channels for s in run.selections)),
        "directions": int(nid - neuron_base) - int(sum(s.layer.channels for s in run.selections)),
    }


@dataclass
class StoredIngest:
    """Where an ingest's rows live in the index: its id and, per selected layer, its neuron ids."""
    ingest_id: int
    neuron_ids: list  # per layer: array of neurons.id, by channel
