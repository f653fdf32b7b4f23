"""Recompute pass 2 and the derived indexes of stored ingests (another NF threshold, another th).

In: an index directory (and the images and weights its ingests recorded). Out: the same ingests
with new Neuron Features, indexes and embeddings, published atomically; pass 1 is not re-run.
"""
from __future__ import annotations

import json

import numpy as np

from neuronindex import store
from neuronindex.errors import IngestError, NotFoundError, did_you_mean
from neuronindex.jobs.derive import run_all
from neuronindex.jobs.ingest import IngestParams, build_vectors, prepare
from neuronindex.jobs.publish import StoredIngest, sync_classes
from neuronindex.nets.models import Preprocessing
from neuronindex.science.directions import StoredDirections
from neuronindex.science.stats import UnitResults
from neuronindex.store import execute
from neuronindex.store.directory import IndexDirectory


def results_from_index(con, ingest_id: int) -> tuple[list[str], list[dict], list[np.ndarray], list]:
    """Rebuild the pass-1 results needed by pass 2 and the indexes from a stored ingest.

    Returns (layer names as selected, per-layer results (channels, then directions), per-layer
    neuron ids, per-layer directions.StoredDirections or None).
    """

    layers = execute(con, "SELECT l.id, l.name, (SELECT count(*) FROM neurons n WHERE n.layer_id = l.id) FROM layers l "
                          "WHERE l.ingest_id = ? ORDER BY l.position", [ingest_id])
    k = int(execute(con, "SELECT max(rank) FROM topk t JOIN neurons n ON n.id = t.neuron_id WHERE n.ingest_id = ?",
                    [ingest_id])[0][0] or 1)
    names, results, ids, directions = [], [], [], []
    for layer_id, name, channels in layers:
        directions.append(stored_directions(con, layer_id))
        neuron_rows = execute(con, "SELECT id, channel, act_max, dead FROM neurons WHERE layer_id = ? ORDER BY channel",
                              [layer_id])
        nid = np.array([r[0] for r in neuron_rows])
        act_max = np.array([np.nan if r[2] is None else r[2] for r in neuron_rows], dtype=float)
        dead = np.array([bool(r[3]) for r in neuron_rows], dtype=bool)
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
        results.append(UnitResults(top_values=vals, top_ids=pos, top_y=ys, top_x=xs, act_max=act_max, dead=dead))
        ids.append(nid)
    return names, results, ids, directions


def same_images(index_dir, dataset_id: int, images) -> bool:
    """The stored dataset holds these files in this order with the same classes, classes taken by
    WordNet id where they have one: a fingerprint that differs only because class names changed
    (n02085620 -> Chihuahua once WordNet is at hand) is the same collection."""

    con = store.connect(index_dir)
    try:
        stored = execute(con, "SELECT i.path, c.name, c.wnid FROM images i LEFT JOIN classes c ON c.id = i.class_id "
                              "WHERE i.dataset_id = ? ORDER BY i.position", [dataset_id])
    finally:
        con.close()
    fresh = []
    for r in images.images:
        node = images.classes.get(r.label) if r.label is not None else None
        fresh.append((r.path, node.wnid if node is not None and node.wnid else r.label))
    return [(path, wnid or name) for path, name, wnid in stored] == fresh


def recompute(index_dir, model: str | None = None, progress: bool = True, **overrides) -> list[dict]:
    """Recompute pass 2 and the derived indexes of stored ingests (e.g. with another NF threshold)."""
    con = store.connect(index_dir)
    try:
        rows = execute(con, "SELECT i.id, m.name, m.spec, m.weights, m.preprocessing, i.parameters, d.source, "
                            "m.fingerprint, d.fingerprint, d.labels, d.class_list, d.id FROM ingests i JOIN models m ON m.id = i.model_id "
                            "JOIN datasets d ON d.id = i.dataset_id ORDER BY i.id")
        if model is not None:
            known = [r[1] for r in rows]
            rows = [r for r in rows if r[1] == model]
            if not rows:
                raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, known) or '; it has ' + ', '.join(known)}")
        jobs = []
        for ingest_id, name, spec, weights, pre, params, source, model_fp, data_fp, labels, class_list, dataset_id in rows:
            names, results, ids, directions = results_from_index(con, ingest_id)
            jobs.append((ingest_id, name, spec, weights, pre, json.loads(params), source, model_fp, data_fp,
                         names, results, ids, labels, class_list, directions, dataset_id))
    finally:
        con.close()
    done = []
    for ingest_id, name, spec, weights, pre, params, source, model_fp, data_fp, names, results, ids, labels, \
            class_list, directions, dataset_id in jobs:
        params = {**params, **{k: v for k, v in overrides.items() if v is not None}}
        p = IngestParams(**{k: v for k, v in params.items() if k in IngestParams.__dataclass_fields__})
        p.shard = None
        labels = labels if labels not in (None, "manifest", "torchvision") else "auto"
        run = prepare(spec, source, names, weights=weights, name=name, preprocessing=Preprocessing.from_json(pre), params=p,
                      labels=labels, class_list=class_list)

        if run.meta["model_fingerprint"] != model_fp:
            raise IngestError(f"the weights of {name} ({weights}) changed since it was ingested; ingest it again")
        renamed = run.meta["data_fingerprint"] != data_fp
        if renamed and not same_images(index_dir, dataset_id, run.images):
            raise IngestError(f"the images of {source} changed since {name} was ingested; ingest it again")
        run.directions = directions
        derived = run_all(run, results, progress=progress, spill=IndexDirectory(index_dir).work)
        with store.staged(index_dir) as wcon:
            # class names and hierarchy as the images give them now (WordNet installed since, or the
            # bundled ImageNet-1k hierarchy): the roll-ups below then reach every ancestor
            classes_changed = sync_classes(wcon, dataset_id, run.images)
            if renamed:  # the same files under their new class names: the fingerprint follows the names
                execute(wcon, "UPDATE datasets SET fingerprint = ? WHERE id = ?", [run.meta["data_fingerprint"], dataset_id])
                execute(wcon, "UPDATE ingests SET data_fingerprint = ? WHERE dataset_id = ?",
                        [run.meta["data_fingerprint"], dataset_id])
            derived.write(wcon, StoredIngest(ingest_id, ids))
            execute(wcon, "UPDATE ingests SET parameters = ? WHERE id = ?", [json.dumps(params), ingest_id])
        done.append({"model": name, "neurons": int(sum(len(i) for i in ids)), "classes_changed": classes_changed})

    build_vectors(index_dir)
    return done


def stored_directions(con, layer_id: int) -> StoredDirections | None:
    """A layer's stored directions, as their maps need them (None: the layer has none)."""
    rows = execute(con, 'SELECT d.name, d.kind, d.weights, d."offset" FROM directions d JOIN neurons n '
                        'ON n.id = d.neuron_id WHERE d.layer_id = ? ORDER BY n.channel', [layer_id])
    if not rows:
        return None
    return StoredDirections([r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows], dtype=np.float64),
                            np.array([r[3] for r in rows], dtype=np.float64))
