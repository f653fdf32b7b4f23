"""`neuronindex dissect`: Network Dissection (Bau et al., CVPR 2017) of the stored layers of a model.

One pass over the concept images: each batch's maps go to `science.dissection.Dissection`, which
counts every unit's map values for its threshold T_k (top `dissect_quantile`, 0.005) and tallies
its upsampled map (`upsample_units`: unit (i, j) at the centre of its receptive field, bilinear
between, at the masks' resolution) against the concept masks at the levels the threshold can
still reach; no map is kept. Concept sets: `colour` (every pixel of the model's own images named
by the colour model, `science.concepts`) or a folder (`conceptsets`: Broden or plain layout).
Published (small, in place when no reader has the index open): the concepts, one `dissections`
row per layer, and each unit's best `dissect_top` concepts with their IoU in `unit_concepts`.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
from tqdm import tqdm

from neuronindex import store
from neuronindex.errors import DataError, UsageError
from neuronindex.nets.models import Preprocessing
from neuronindex.query.concepts import concept_source, mask_size
from neuronindex.query.reader import Reader
from neuronindex.science.dissection import (
    AnnotatedBatch,
    Annotation,
    Dissection,
    TopImages,
    grid,
)
from neuronindex.settings import default
from neuronindex.store import execute, next_id
from neuronindex.store.writer import insert


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
    """Dissect the stored layers of a model (all, or those named) with a concept set (`colour`, or
    a Broden or plain folder); returns one summary row per layer: units, interpretable units (best
    IoU above `dissect_iou`), their labels."""
    import torch

    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    q, top = default("dissect_quantile"), default("dissect_top")
    with Reader(index_dir) as idx:
        model = model or idx.only_model()
        row = idx.model_row(model)
        model_id, pre = row["id"], idx.rows("SELECT preprocessing FROM models WHERE id = ?", [row["id"]])[0]["preprocessing"]
        source = concept_source(idx, model_id, pre, concepts, limit)
        chosen = idx.layer_list(model) if not layers else [r for name in layers for r in idx.layer_rows(model, name)]
        chosen = [r for r in chosen if r["rf_stride"]]
        if not chosen:
            raise UsageError(f"no layer of {model} has a receptive field to align its maps with the masks")
        if not source.items:
            raise UsageError(f"no concept images in {concepts}")
        net = idx.network(model, None)
        input_size = tuple(Preprocessing.from_json(pre).input_size)
        size = mask_size(input_size, default("dissect_mask"))
        groups = {r["id"]: _groups(idx, r["id"]) for r in chosen}
        tallies: dict[int, Dissection] = {}
        tops = {r["id"]: TopImages(r["channels"]) for r in chosen}
        grids: dict[int, list] = {}
        shown: list = []  # the items read, in order: TopImages ids index it
        spent = {r["id"]: 0.0 for r in chosen}
        skipped, seen_images = 0, 0
        shared = 0.0  # reading the images and the forward, which every layer shares
        bar = tqdm(total=len(source.items), unit="img", desc="dissect", disable=not progress, dynamic_ncols=True)

        def tally_layer(r, maps, annotations, first):
            """One layer's share of a batch: counts, floors, top images, tallies."""
            t0 = time.perf_counter()
            m = maps[r["id"]]
            if r["id"] not in tallies:
                tallies[r["id"]] = Dissection(r["channels"], source.category_of,
                                              len(source.items) * m.shape[2] * m.shape[3], q)
                grids[r["id"]] = [(channels, grid(size, m.shape[2:], start, field, r["rf_stride"], input_size))
                                  for channels, start, field in groups[r["id"]]]
            tally = tallies[r["id"]]
            peaks = tally.add_maps(m)
            tops[r["id"]].add(peaks, np.arange(first, first + len(m)))
            tally.add_images(m, annotations, grids[r["id"]], peaks)
            spent[r["id"]] += time.perf_counter() - t0

        # layers tally apart (the compiled kernels release the GIL): one thread per core
        with ThreadPoolExecutor(max(1, min(len(chosen), torch.get_num_threads()))) as pool:
            for s in range(0, len(source.items), batch_size):
                t0 = time.perf_counter()
                pixels, annotations, first = [], [], len(shown)
                for item in source.items[s:s + batch_size]:
                    try:
                        seen, ann = source.load(item, size)
                    except DataError:
                        skipped += 1
                        continue
                    pixels.append(seen)
                    annotations.append(ann)
                    shown.append(source.key(item))
                bar.update(len(source.items[s:s + batch_size]))
                if not pixels:
                    continue
                seen_images += len(pixels)
                annotations = AnnotatedBatch.of([Annotation.of(a, len(source.names) + 1) for a in annotations])
                with net.lock:
                    out = net.extractor(torch.from_numpy(np.stack(pixels)))
                    maps = {r["id"]: out[r["node"]][:, :r["channels"]].float().cpu().numpy() for r in chosen}
                shared += time.perf_counter() - t0

                list(pool.map(lambda r: tally_layer(r, maps, annotations, first), chosen))
        bar.close()
        if not tallies:
            raise UsageError(f"none of the {len(source.items)} concept images could be read")
    ious = {lid: t.iou() for lid, t in tallies.items()}
    thresholds = {lid: t.thresholds() for lid, t in tallies.items()}
    report = _publish(index_dir, model, model_id, chosen, source, ious, thresholds, tops, shown, seen_images, size,
                      spent, shared, top, q, wait)
    for r in report:
        r["skipped"] = skipped
    return report


def _publish(index_dir, model, model_id, chosen, source, ious, thresholds, tops, shown, n_images, size, spent, forward,
             top, q, wait) -> list[dict]:
    iou_min = default("dissect_iou")
    report = []
    with store.staged(index_dir, wait=wait, small=True, search=False) as con:
        known = {(r[1], r[2]): r[0] for r in execute(con, "SELECT id, name, category FROM concepts WHERE source = ?",
                                                       [source.source])}
        ids = [0]
        for name, category in zip(source.names, source.concept_categories):
            if (name, category) not in known:
                known[(name, category)] = next_id(con, "concepts")
                execute(con, "INSERT INTO concepts VALUES (?, ?, ?, ?)",
                        [known[(name, category)], name, category, source.source])
            ids.append(known[(name, category)])
        concept_ids = np.array(ids)
        for r in chosen:
            for (old,) in execute(con, "SELECT id FROM dissections WHERE layer_id = ? AND source = ?",
                                  [r["id"], source.source]):
                execute(con, "DELETE FROM unit_concepts WHERE dissection_id = ?", [old])
                execute(con, "DELETE FROM dissection_images WHERE dissection_id = ?", [old])
                execute(con, "DELETE FROM dissections WHERE id = ?", [old])
            did = next_id(con, "dissections")
            seconds = spent[r["id"]] + forward / len(chosen)
            execute(con, "INSERT INTO dissections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [did, model_id, r["id"], source.source, n_images, q, iou_min, size[0], size[1], seconds,
                     datetime.now(timezone.utc).replace(tzinfo=None)])
            neuron_of = dict(execute(con, "SELECT channel, id FROM neurons WHERE layer_id = ? AND kind = 'channel'",
                                     [r["id"]]))
            iou, threshold = ious[r["id"]], thresholds[r["id"]]
            iou[:, 0] = -1.0
            order = np.argsort(-iou, axis=1, kind="stable")[:, :top]
            units, cols = np.nonzero(iou[np.arange(len(iou))[:, None], order] > 0)
            best = order[units, cols]
            insert(con, "unit_concepts", {
                "dissection_id": np.full(len(units), did), "neuron_id": np.array([neuron_of[u] for u in units], dtype=np.int64),
                "concept_id": concept_ids[best], "iou": iou[units, best], "rank": cols + 1,
                "threshold": threshold[units]})
            best_images = tops[r["id"]]
            unit_of, rank_of = np.nonzero(best_images.ids >= 0)
            picked = [shown[i] for i in best_images.ids[unit_of, rank_of]]
            insert(con, "dissection_images", {
                "dissection_id": np.full(len(unit_of), did),
                "neuron_id": np.array([neuron_of[u] for u in unit_of], dtype=np.int64), "rank": rank_of + 1,
                "path": [p for p, _ in picked], "source": [src for _, src in picked],
                "activation": best_images.values[unit_of, rank_of]})
            label = order[:, 0]
            named = iou[np.arange(len(iou)), label] > iou_min
            labels = [source.names[c - 1] for c in label[named]]
            counts = {name: labels.count(name) for name in dict.fromkeys(labels)}
            report.append({"model": model, "layer": r["name"], "units": int(iou.shape[0]), "interpretable": len(labels),
                           "labels": ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])),
                           "seconds": round(seconds, 2), "source": source.source})
    return report
