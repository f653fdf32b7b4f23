"""Category hierarchies and filter prediction trees (Dai 2020), built and published: `neuronindex categories`
(also ingest's last step) and `neuronindex tree`."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from neuronindex import store
from neuronindex.errors import IndexNotFoundError, UsageError
from neuronindex.query.categories import (
    check_pooling,
    class_chains,
    class_images,
    class_vectors,
    resolve_pooling,
    stored_layer,
)
from neuronindex.query.reader import Reader
from neuronindex.science.hierarchy import (
    category_hierarchy,
    cosine_distances,
    prediction_tree,
    wordnet_agreement,
)
from neuronindex.settings import default
from neuronindex.store import execute, next_id
from neuronindex.store.directory import IndexDirectory
from neuronindex.store.writer import insert


def build(con, model: str | None = None, layer: str | None = None, pooling: str | None = None) -> dict:
    """Compute and store the category hierarchy of a model at a layer in a writable connection
    (pooling None: mean when spatial means are stored, else max)."""

    model_id, model, lay = stored_layer(con, model, layer)
    pooling = resolve_pooling(con, lay["id"], pooling)
    classes, x = class_vectors(con, lay["id"], pooling)
    if len(classes) < 2:
        raise UsageError(f"a category hierarchy needs images of at least 2 classes; {model} {lay['name']} has "
                         f"{len(classes)}")
    h = category_hierarchy(cosine_distances(x))
    chains = class_chains(con, classes)
    wn = wordnet_agreement(h, chains) if chains and len(classes) >= 3 else None
    for row in execute(con, "SELECT id FROM hierarchies WHERE model_id = ? AND layer_id = ? AND pooling = ?",
                       [model_id, lay["id"], pooling]):
        for table in ("hierarchy_nodes", "class_distances"):
            execute(con, f"DELETE FROM {table} WHERE hierarchy_id = ?", [row[0]])
        execute(con, "DELETE FROM hierarchies WHERE id = ?", [row[0]])
    hid = next_id(con, "hierarchies")
    n = h.n
    insert(con, "hierarchies", {
        "id": [hid], "model_id": [model_id], "layer_id": [lay["id"]], "pooling": [pooling], "n_classes": [n],
        "centre_class_id": [classes[h.centre()]], "hub_class_id": [classes[h.hub()]],
        "wordnet_correlation": [wn["correlation"] if wn else None], "wordnet_baseline": [wn["baseline"] if wn else None],
        "wordnet_sibling_auc": [wn["sibling_auc"] if wn else None],
        "wordnet_classes": [n if wn else None], "created": [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())]})
    parent = h.parents()
    order = np.empty(n, dtype=int)
    order[h.order] = np.arange(n)
    total = 2 * n - 1
    insert(con, "hierarchy_nodes", {
        "hierarchy_id": np.full(total, hid), "node": np.arange(total),
        "parent": [int(p) if p >= 0 else None for p in parent],
        "class_id": [classes[i] if i < n else None for i in range(total)],
        "height": np.concatenate([np.zeros(n), h.linkage[:, 2]]),
        "size": np.concatenate([np.ones(n, dtype=int), h.linkage[:, 3].astype(int)]),
        "leaf_order": [int(order[i]) if i < n else None for i in range(total)],
        "mst_degree": [int(h.degree[i]) if i < n else None for i in range(total)],
        "eccentricity": [float(h.eccentricity[i]) if i < n else None for i in range(total)]})
    a, b = np.nonzero(~np.eye(n, dtype=bool))
    ids = np.array(classes)
    insert(con, "class_distances", {"hierarchy_id": np.full(len(a), hid), "class_a": ids[a], "class_b": ids[b],
                                    "distance": h.distances[a, b], "cophenetic": h.cophenetic[a, b],
                                    "in_mst": h.mst[a, b]})
    names = dict(con.execute("SELECT id, name FROM classes").fetchall())
    root_children = [h.leaves(int(c)) for c in h.linkage[-1][:2]]
    return {"model": model, "layer": lay["name"], "pooling": pooling, "classes": n,
            "centre": names[classes[h.centre()]], "hub": names[classes[h.hub()]],
            "top_split": [sorted(names[classes[i]] for i in side) for side in root_children],
            "wordnet": wn}


def build_default(con, model_id: int) -> dict | None:
    """The hierarchy of a freshly ingested model at its deepest layer (ingest's last step); None with
    fewer than 2 classes."""
    name = con.execute("SELECT name FROM models WHERE id = ?", [model_id]).fetchone()[0]
    layer = con.execute("SELECT id, name FROM layers WHERE model_id = ? ORDER BY position DESC LIMIT 1",
                        [model_id]).fetchone()
    if layer is None or len(class_vectors(con, layer[0], resolve_pooling(con, layer[0], None))[0]) < 2:
        return None
    return build(con, name, layer[1])


def publish_hierarchy(index_dir, model: str | None = None, layer: str | None = None, pooling: str | None = None,
        wait: bool = True) -> dict:
    """Build and publish the category hierarchy (the CLI's `neuronindex categories`)."""
    if not IndexDirectory(index_dir).exists():

        raise IndexNotFoundError(f"no index at {index_dir}; create one with `neuronindex ingest --index {index_dir} ...`")
    with store.staged(index_dir, wait=wait, small=True, search=False) as con:
        return build(con, model, layer, pooling)


def image_vectors(idx, model: str, layer_row: dict, images: list[tuple[int, str, str]], pooling: str,
                  batch_size: int = 32) -> np.ndarray:
    """(images, channels) pooled feature vectors of a layer, by one forward of the images."""
    import torch

    net = idx.network(model, layer_row["name"])
    pre = net.loaded.preprocessing
    out = []
    for s in range(0, len(images), batch_size):
        batch = [np.asarray(pre.geometric(idx.load_image(p, src)), dtype=np.uint8) for _, p, src in images[s:s + batch_size]]
        with net.lock:
            maps = net.extractor(torch.from_numpy(np.stack(batch)))[layer_row["node"]]
            pooled = maps.amax((2, 3)) if pooling == "max" else maps.mean((2, 3))
            out.append(pooled.float().cpu().numpy())
    return np.concatenate(out)


def tree(index_dir, class_name: str, layer: str | None = None, model: str | None = None, pooling: str = "max",
         max_images: int | None = None, seed: int = 0, wait: bool = True) -> dict:
    """Build, store and return the filter prediction tree of a class at a layer (`neuronindex tree`)."""
    max_images = default("tree_max_images") if max_images is None else max_images
    if not isinstance(max_images, int) or max_images < 2:
        raise UsageError(f"--max-images must be a whole number >= 2, not {max_images!r}")
    check_pooling(pooling)
    t0 = time.perf_counter()
    with Reader(index_dir) as idx:
        model_id, model, lay = stored_layer(idx.con, model, layer)
        cid, images = class_images(idx.con, model_id, class_name)
        total = len(images)
        if total < 2:
            raise UsageError(f"class {class_name!r} has {total} image(s); a prediction tree needs at least 2")
        if total > max_images:
            keep = np.sort(np.random.default_rng(seed).choice(total, max_images, replace=False))
            images = [images[i] for i in keep]
        x = image_vectors(idx, model, lay, images, pooling)
        neuron_of = dict(idx.con.execute("SELECT channel, id FROM neurons WHERE layer_id = ? AND kind = 'channel'",
                                         [lay["id"]]).fetchall())
    nodes = prediction_tree(x)
    n = len(images)
    parent = {}
    for nd in nodes:
        for ch in nd["children"]:
            parent[ch] = nd["node"]
    seconds = time.perf_counter() - t0
    with store.staged(index_dir, wait=wait, small=True, search=False) as con:
        for row in execute(con, "SELECT id FROM prediction_trees WHERE model_id = ? AND layer_id = ? AND class_id = ? "
                                "AND pooling = ?", [model_id, lay["id"], cid, pooling]):
            execute(con, "DELETE FROM prediction_tree_nodes WHERE tree_id = ?", [row[0]])
            execute(con, "DELETE FROM prediction_trees WHERE id = ?", [row[0]])
        tid = next_id(con, "prediction_trees")
        insert(con, "prediction_trees", {
            "id": [tid], "model_id": [model_id], "layer_id": [lay["id"]], "class_id": [cid], "pooling": [pooling],
            "n_images": [n], "class_images": [total], "n_filters": [x.shape[1]], "max_images": [max_images],
            "seed": [seed], "root": [nodes[-1]["node"]], "seconds": [seconds],
            "created": [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())]})

        insert(con, "prediction_tree_nodes", {
            "tree_id": [tid] * len(nodes), "node": [nd["node"] for nd in nodes],
            "parent": [parent.get(nd["node"]) for nd in nodes],
            "image_id": [images[nd["node"]][0] if nd["node"] < n else None for nd in nodes],
            "critical_channel": [nd.get("critical") for nd in nodes],
            "critical_neuron_id": [neuron_of.get(nd["critical"]) if "critical" in nd else None for nd in nodes],
            "distance": [nd.get("distance") for nd in nodes], "change": [nd.get("change") for nd in nodes],
            "n_reachable": [len(nd["reachable"]) if nd["reachable"] is not None else x.shape[1] for nd in nodes],
            "reachable": [nd["reachable"] for nd in nodes]}, types={"reachable": pa.list_(pa.int32())})
    merges = [nd for nd in nodes if "critical" in nd]
    top = nodes[-1]["children"]
    return {"model": model, "layer": lay["name"], "class": class_name, "tree_id": tid, "images": n,
            "class_images": total, "filters": int(x.shape[1]), "merges": len(merges), "root_children": len(top),
            "reachable_at_top": sorted((len(nodes[t]["reachable"]) if nodes[t]["reachable"] is not None
                                        else int(x.shape[1])) for t in top),
            "first_critical": [nd["critical"] for nd in merges[-3:]][::-1], "seconds": seconds}
