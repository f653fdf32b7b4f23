"""`neuronindex dissect`: Network Dissection (Bau et al., CVPR 2017) of the stored layers of a model.

Two passes over the concept images (the model's own ingested images, as it saw them): the first
streams every unit's map values into `science.dissection.TopQuantile` for its threshold T_k (top
`dissect_quantile`, 0.005); the second upsamples each map to the image by the unit's receptive
field (`upsample_units`: unit (i, j) at the centre of its field, bilinear between), thresholds it at
T_k and tallies its intersections and unions with the concept masks (`IoUTally`). No map is kept.
Concept sets: `colour`, every pixel named by the colour model (`science.concepts`). Published
(small, in place when no reader has the index open): the concepts, one `dissections` row per
layer, and each unit's best `dissect_top` concepts with their IoU in `unit_concepts`.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
from tqdm import tqdm

from neuronindex import store
from neuronindex.errors import UsageError
from neuronindex.query.reader import Reader
from neuronindex.science.concepts import COLOUR_CATEGORY, COLOUR_CONCEPTS, colour_labels
from neuronindex.science.dissection import IoUTally, TopQuantile, upsample_units
from neuronindex.settings import default
from neuronindex.store import execute, next_id
from neuronindex.store.writer import insert

SOURCES = ("colour",)


def _images(idx: Reader, model_id: int, limit: int | None) -> list[tuple[str, str]]:
    rows = idx.rows("SELECT i.path, d.source FROM images i JOIN datasets d ON d.id = i.dataset_id JOIN ingests g "
                    "ON g.dataset_id = d.id WHERE g.model_id = ? AND i.problem IS NULL ORDER BY i.id", [model_id])
    rows = [(r["path"], r["source"]) for r in rows]
    return rows[:limit] if limit else rows


def _groups(idx: Reader, layer_id: int) -> list[tuple[np.ndarray, tuple, tuple]]:
    """The layer's channels grouped by receptive-field geometry: (channel indexes, start, field)."""
    rows = idx.rows("SELECT channel, rf_y0, rf_x0, rf_h, rf_w FROM neurons WHERE layer_id = ? AND kind = 'channel' "
                    "ORDER BY channel", [layer_id])
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["rf_y0"], r["rf_x0"], r["rf_h"], r["rf_w"]), []).append(r["channel"])
    return [(np.array(ch), (g[0], g[1]), (g[2], g[3])) for g, ch in groups.items()]


def dissect(index_dir, concepts: str = "colour", layers: list[str] | None = None, model: str | None = None,
            limit: int | None = None, batch_size: int = 32, progress: bool = True, wait: bool = True) -> list[dict]:
    """Dissect the stored layers of a model (all, or those named) with a concept set; returns one
    summary row per layer: units, interpretable units (best IoU above `dissect_iou`), their labels."""
    import torch

    if concepts not in SOURCES:
        raise UsageError(f"unknown concept set {concepts!r}; use {', '.join(SOURCES)}")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    q, top = default("dissect_quantile"), default("dissect_top")
    with Reader(index_dir) as idx:
        model = model or idx.only_model()
        model_id = idx.model_row(model)["id"]
        chosen = idx.layer_list(model) if not layers else [r for name in layers for r in idx.layer_rows(model, name)]
        chosen = [r for r in chosen if r["rf_stride"]]
        if not chosen:
            raise UsageError(f"no layer of {model} has a receptive field to align its maps with the masks")
        net = idx.network(model, None)
        pre = idx.rows("SELECT preprocessing FROM models WHERE id = ?", [model_id])[0]["preprocessing"]
        images = _images(idx, model_id, limit)
        if not images:
            raise UsageError(f"{model} has no readable images to dissect with")
        groups = {r["id"]: _groups(idx, r["id"]) for r in chosen}
        quantiles = {r["id"]: TopQuantile(r["channels"]) for r in chosen}
        category_of = np.zeros(len(COLOUR_CONCEPTS) + 1, dtype=np.int64)  # one category: colour
        tallies = {r["id"]: IoUTally(r["channels"], category_of) for r in chosen}
        spent = {r["id"]: 0.0 for r in chosen}

        def batches(desc):
            bar = tqdm(total=len(images), unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
            for s in range(0, len(images), batch_size):
                seen = np.stack([idx.seen(p, src, pre) for p, src in images[s:s + batch_size]])
                with net.lock:
                    maps = net.extractor(torch.from_numpy(seen))
                    maps = {r["id"]: maps[r["node"]][:, :r["channels"]].float().cpu().numpy() for r in chosen}
                bar.update(len(seen))
                yield seen, maps
            bar.close()

        started = time.perf_counter()
        for _, maps in batches("dissect: thresholds"):
            for lid, m in maps.items():
                t0 = time.perf_counter()
                quantiles[lid].add(m)
                spent[lid] += time.perf_counter() - t0
        thresholds = {lid: tq.threshold(q) for lid, tq in quantiles.items()}
        for seen, maps in batches("dissect: IoU"):
            labels = [colour_labels(img) for img in seen]
            h, w = seen.shape[1:3]
            for r in chosen:
                t0 = time.perf_counter()
                m, T = maps[r["id"]], thresholds[r["id"]]
                for b in range(len(seen)):
                    masks = np.zeros((r["channels"], h, w), dtype=bool)
                    for channels, start, field in groups[r["id"]]:
                        up = upsample_units(m[b, channels], (h, w), start, field, r["rf_stride"])
                        masks[channels] = up >= T[channels, None, None]
                    tallies[r["id"]].add(masks, {0: [labels[b]]})
                spent[r["id"]] += time.perf_counter() - t0
        forward = time.perf_counter() - started - sum(spent.values())
    ious = {lid: t.iou() for lid, t in tallies.items()}
    return _publish(index_dir, model, model_id, chosen, ious, thresholds, len(images), (h, w), spent, forward,
                    concepts, top, q, wait)


def _publish(index_dir, model, model_id, chosen, ious, thresholds, n_images, size, spent, forward, source, top, q,
             wait) -> list[dict]:
    iou_min = default("dissect_iou")
    report = []
    with store.staged(index_dir, wait=wait, small=True, search=False) as con:
        known = {(r[1], r[2]): r[0] for r in execute(con, "SELECT id, name, category FROM concepts WHERE source = ?",
                                                       [source])}
        ids = []
        for name in COLOUR_CONCEPTS:
            if (name, COLOUR_CATEGORY) not in known:
                known[(name, COLOUR_CATEGORY)] = next_id(con, "concepts")
                execute(con, "INSERT INTO concepts VALUES (?, ?, ?, ?)",
                        [known[(name, COLOUR_CATEGORY)], name, COLOUR_CATEGORY, source])
            ids.append(known[(name, COLOUR_CATEGORY)])
        concept_ids = np.array([0] + ids)
        for r in chosen:
            for (old,) in execute(con, "SELECT id FROM dissections WHERE layer_id = ? AND source = ?", [r["id"], source]):
                execute(con, "DELETE FROM unit_concepts WHERE dissection_id = ?", [old])
                execute(con, "DELETE FROM dissections WHERE id = ?", [old])
            did = next_id(con, "dissections")
            seconds = spent[r["id"]] + forward / len(chosen)
            execute(con, "INSERT INTO dissections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [did, model_id, r["id"], source, n_images, q, iou_min, size[0], size[1], seconds,
                     datetime.now(timezone.utc).replace(tzinfo=None)])
            neuron_of = dict(execute(con, "SELECT channel, id FROM neurons WHERE layer_id = ? AND kind = 'channel'",
                                     [r["id"]]))
            iou = ious[r["id"]][:, 1:]
            order = np.argsort(-iou, axis=1, kind="stable")[:, :top]
            rows = {"dissection_id": [], "neuron_id": [], "concept_id": [], "iou": [], "rank": [], "threshold": []}
            labels = []
            for ch in range(iou.shape[0]):
                best = [c for c in order[ch] if iou[ch, c] > 0]
                for rank, c in enumerate(best, 1):
                    for k, v in (("dissection_id", did), ("neuron_id", neuron_of[ch]), ("concept_id", int(concept_ids[c + 1])),
                                 ("iou", float(iou[ch, c])), ("rank", rank), ("threshold", float(thresholds[r["id"]][ch]))):
                        rows[k].append(v)
                if best and iou[ch, best[0]] > iou_min:
                    labels.append(COLOUR_CONCEPTS[best[0]])
            if rows["neuron_id"]:
                insert(con, "unit_concepts", rows)
            counts = {name: labels.count(name) for name in dict.fromkeys(labels)}
            report.append({"model": model, "layer": r["name"], "units": int(iou.shape[0]), "interpretable": len(labels),
                           "labels": ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])),
                           "seconds": round(seconds, 2)})
    return report
