"""Category hierarchy (Dai 2020 section 3.1, Algorithm 1) and filter prediction trees (section 3.2,
Algorithm 2).

Category hierarchy, per model and layer (default: the deepest stored layer)
  class vector   the mean over the class's images of the layer's pooled feature vector: the
                 `class_means` of pass 1 (pooling max: each channel's spatial maximum, the
                 neurons' activation; mean: its spatial mean, stored by ingest --spatial-means,
                 what a classifier's global average pool reads; the default when stored)
  distance       cosine distance 1 - cos(u, v) between class vectors
  merges         the closest pair of top nodes merges into a parent; the parent's distance to
                 every other node is the average of its two children's (the seed's rule; WPGMA,
                 scipy's `weighted` linkage); each merge's height is that pair's distance
  MST            the minimum spanning tree of the dense class graph; its centre is the class of
                 least eccentricity along the tree, its hub the class with most edges (Dai 2020
                 reports cat as CIFAR-10's centre)
  WordNet        for classes with WordNet ids (ImageNet), the Spearman correlation between merge
                 heights and WordNet tree distances over all pairs, a shuffled-label baseline, and
                 the probability that a pair of WordNet siblings (same first hypernym) merges below
                 any other pair (ties half; chance 0.5)

Filter prediction tree, per (model, layer, class)
  leaves         the pooled feature vectors of the class's images (at most `max_images`, a
                 seeded sample), children of the root, each reaching every filter
  merge          the two closest children of the root, by cosine distance over the filters both
                 reach, become a node reaching their common filters minus the *critical filter*:
                 the one whose removal changes that distance most. The node's vector is the
                 mean of its two children's (as Algorithm 1 averages distances).
  stop           when no two children of the root share two reachable filters (a merge must
                 leave its node one filter). The seed's condition, every child reaching one
                 filter, is the case where filters run out first; when images run out first
                 (fewer images than filters) the tree ends with one child of the root.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from neuronindex.errors import NotFoundError, UsageError, did_you_mean

POOLINGS = ("max", "mean")
WORDNET_SHUFFLES = 20


# ------------------------------------------------------------------------------ Algorithm 1

def cosine_distances(x: np.ndarray) -> np.ndarray:
    """1 - cosine similarity between the rows of x (a zero row is at distance 1 from all)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    d = 1.0 - u @ u.T
    np.fill_diagonal(d, 0.0)
    return np.clip((d + d.T) / 2, 0.0, 2.0)


@dataclass
class Hierarchy:
    """The merges (scipy linkage rows: child a, child b, height, size), the dendrogram's leaf
    order, cophenetic distances and the minimum spanning tree of a distance matrix."""
    distances: np.ndarray
    linkage: np.ndarray
    order: list[int]
    cophenetic: np.ndarray
    mst: np.ndarray            # (n, n) bool, symmetric
    degree: np.ndarray
    eccentricity: np.ndarray

    @property
    def n(self) -> int:
        return len(self.distances)

    def parents(self) -> np.ndarray:
        """parent[node] for nodes 0..2n-2 (-1 at the root)."""
        parent = np.full(2 * self.n - 1, -1)
        for i, (a, b, _, _) in enumerate(self.linkage):
            parent[int(a)] = parent[int(b)] = self.n + i
        return parent

    def leaves(self, node: int) -> list[int]:
        if node < self.n:
            return [node]
        a, b = self.linkage[node - self.n][:2]
        return self.leaves(int(a)) + self.leaves(int(b))

    def centre(self) -> int:
        return int(np.argmin(self.eccentricity))

    def hub(self) -> int:
        top = self.degree.max()
        return min(np.flatnonzero(self.degree == top), key=lambda i: self.eccentricity[i])


def category_hierarchy(distances: np.ndarray) -> Hierarchy:
    """Algorithm 1 of Dai 2020 on a symmetric distance matrix, plus its minimum spanning tree."""
    from scipy.cluster.hierarchy import cophenet, leaves_list, linkage
    from scipy.sparse.csgraph import minimum_spanning_tree, shortest_path
    from scipy.spatial.distance import squareform

    d = np.asarray(distances, dtype=np.float64)
    n = len(d)
    if n < 2:
        raise UsageError(f"a category hierarchy needs at least 2 classes with images, not {n}")
    condensed = squareform(d, checks=False)
    z = linkage(condensed, method="weighted")
    coph = squareform(cophenet(z))
    # csgraph reads a zero as "no edge": a tiny offset keeps identical classes connected
    tree = minimum_spanning_tree(d + 1e-12 * (1 - np.eye(n))).toarray()
    mst = (tree > 0) | (tree.T > 0)
    along = shortest_path(np.where(mst, d, 0), directed=False)
    return Hierarchy(d, z, [int(i) for i in leaves_list(z)], coph, mst, mst.sum(1), along.max(1))


def wordnet_tree_distances(parents: list[list[int]]) -> np.ndarray:
    """Path lengths between leaves of a tree, each given by its chain of ancestors (self first)."""
    n = len(parents)
    depth_of = [{a: k for k, a in enumerate(chain)} for chain in parents]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            common = next((k for k, a in enumerate(parents[i]) if a in depth_of[j]), None)
            d = (common + depth_of[j][parents[i][common]]) if common is not None else len(parents[i]) + len(parents[j])
            out[i, j] = out[j, i] = d
    return out


def wordnet_agreement(h: Hierarchy, chains: list[list[int]], seed: int = 0) -> dict:
    """How the learned hierarchy agrees with WordNet's on classes with ancestor chains."""
    from scipy.spatial.distance import squareform
    from scipy.stats import spearmanr

    wn = wordnet_tree_distances(chains)
    learned = squareform(h.cophenetic, checks=False)
    truth = squareform(wn, checks=False)
    corr = float(spearmanr(learned, truth).statistic)
    rng = np.random.default_rng(seed)
    shuffled = []
    for _ in range(WORDNET_SHUFFLES):
        p = rng.permutation(h.n)
        shuffled.append(spearmanr(squareform(h.cophenetic[np.ix_(p, p)], checks=False), truth).statistic)
    siblings = np.array([[len(a) > 1 and len(b) > 1 and a[1] == b[1] for b in chains] for a in chains])
    sib = siblings[np.triu_indices(h.n, 1)]
    auc = None
    if sib.any() and (~sib).any():
        from scipy.stats import rankdata

        # P(a sibling pair merges below another pair), ties half: the Mann-Whitney AUC
        ranks = rankdata(-learned)
        k, m = int(sib.sum()), int((~sib).sum())
        auc = float((ranks[sib].sum() - k * (k + 1) / 2) / (k * m))
    return {"correlation": corr, "baseline": float(np.mean(shuffled)), "sibling_auc": auc,
            "sibling_pairs": int(sib.sum())}


# ------------------------------------------------------------------------------ Algorithm 2

def _masked_distance(u: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Cosine distance between u and each row of v over the filters in mask (rows)."""
    dot = (u * v * mask).sum(-1)
    nu = (u * u * mask).sum(-1)
    nv = (v * v * mask).sum(-1)
    den = np.sqrt(nu * nv)
    return np.where(den > 0, 1.0 - dot / np.where(den > 0, den, 1.0), 1.0)


def critical_filter(u: np.ndarray, v: np.ndarray, common: np.ndarray) -> tuple[int, float, float]:
    """(filter, distance, change): among the filters in `common`, the one whose removal changes the
    cosine distance between u and v most (ties: the lowest channel)."""
    idx = np.flatnonzero(common)
    a, b = u[idx], v[idx]
    dot, na, nb = a @ b, a @ a, b @ b
    base = 1.0 - dot / np.sqrt(na * nb) if na * nb > 0 else 1.0
    dots, nas, nbs = dot - a * b, na - a * a, nb - b * b
    den = np.sqrt(nas * nbs)
    without = np.where(den > 0, 1.0 - dots / np.where(den > 0, den, 1.0), 1.0)
    change = np.abs(without - base)
    k = int(np.flatnonzero(change >= change.max() - 1e-12)[0])  # ties (to rounding): the lowest channel
    return int(idx[k]), float(base), float(change[k])


def prediction_tree(x: np.ndarray) -> list[dict]:
    """Algorithm 2 of Dai 2020 on the (n images, C filters) feature vectors of one class.

    Returns the nodes: leaves 0..n-1 (the images), then the merges in order ({children, critical,
    distance, change, reachable}), then the root, whose children are the nodes left unmerged."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape
    if n < 1 or c < 1:
        raise UsageError("a prediction tree needs at least one image and one filter")
    vectors = [row for row in x]
    reach = [np.ones(c, dtype=bool) for _ in range(n)]
    nodes: list[dict] = [{"node": i, "children": [], "reachable": None} for i in range(n)]
    big = np.inf

    def distances_to(k: int, others: list[int]) -> np.ndarray:
        if not others:
            return np.zeros(0)
        masks = np.array([reach[k] & reach[j] for j in others])
        d = _masked_distance(vectors[k][None], np.array([vectors[j] for j in others]), masks)
        return np.where(masks.sum(1) >= 2, d, big)

    # distances between nodes (upper triangle used); a pair sharing fewer than two filters cannot merge
    dist = np.full((2 * n, 2 * n), big)
    for i in range(n - 1):
        dist[i, i + 1:n] = distances_to(i, list(range(i + 1, n)))
    alive = np.zeros(2 * n, dtype=bool)
    alive[:n] = True
    while alive.sum() > 1:
        ids = np.flatnonzero(alive)
        sub = np.triu(dist[np.ix_(ids, ids)], 1)
        sub[np.tril_indices(len(ids))] = big
        flat = int(np.argmin(sub))  # ties: the lowest pair
        if not np.isfinite(sub.flat[flat]):
            break
        a, b = int(ids[flat // len(ids)]), int(ids[flat % len(ids)])
        common = reach[a] & reach[b]
        crit, d, change = critical_filter(vectors[a], vectors[b], common)
        k = len(nodes)
        r = common.copy()
        r[crit] = False
        vectors.append((vectors[a] + vectors[b]) / 2)
        reach.append(r)
        nodes.append({"node": k, "children": [a, b], "critical": crit, "distance": d, "change": change,
                      "reachable": np.flatnonzero(r).tolist()})
        alive[[a, b]] = False
        others = np.flatnonzero(alive).tolist()
        dist[others, k] = distances_to(k, others)
        alive[k] = True
    active = np.flatnonzero(alive).tolist()
    nodes.append({"node": len(nodes), "children": sorted(active), "reachable": None})
    return nodes


# ------------------------------------------------------------------------------ storage

def _layer(con, model: str | None, layer: str | None):
    """(model id, model name, layer row dict) of a stored layer; the deepest without `layer`."""
    models = con.execute("SELECT id, name FROM models ORDER BY id").fetchall()
    if not models:
        raise NotFoundError("this index holds no model yet; ingest one first")
    if model is None:
        if len(models) > 1:
            raise UsageError(f"this index holds {len(models)} models; name one with --model "
                             f"({', '.join(m[1] for m in models)})")
        model_id, model = models[0]
    else:
        found = [m for m in models if m[1] == model]
        if not found:
            raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, [m[1] for m in models])}")
        model_id = found[0][0]
    cols = ["id", "name", "node", "aliases", "channels", "position"]
    rows = [dict(zip(cols, r)) for r in con.execute(
        f"SELECT {', '.join(cols)} FROM layers WHERE model_id = ? ORDER BY position", [model_id]).fetchall()]
    if not rows:
        raise NotFoundError(f"model {model} has no stored layers")
    if layer is None:
        return model_id, model, rows[-1]
    from neuronindex.nets.layers import stored_names

    found = [r for r in rows if layer in stored_names(r)]
    if not found:
        from neuronindex.errors import LayerError

        raise LayerError(f"model {model} has no stored layer {layer!r}{did_you_mean(layer, [r['name'] for r in rows])}; "
                         f"its layers: {', '.join(r['name'] for r in rows)}")
    return model_id, model, found[0]


def _check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise UsageError(f"unknown pooling {pooling!r}; use max (spatial maximum) or mean (spatial mean)")
    return pooling


def class_vectors(con, layer_id: int, pooling: str = "max") -> tuple[list[int], np.ndarray]:
    """(class ids, (classes, channels) class means) of a layer's neurons (channels, not directions)."""
    column = "mean_activation" if _check_pooling(pooling) == "max" else "mean_spatial"
    rows = con.execute(
        f"SELECT cm.class_id, n.channel, cm.{column} FROM class_means cm JOIN neurons n ON n.id = cm.neuron_id "
        "WHERE n.layer_id = ? AND n.kind = 'channel' AND coalesce(cm.n_images, 0) > 0 ORDER BY cm.class_id, n.channel",
        [layer_id]).fetchall()
    if not rows:
        return [], np.zeros((0, 0))
    classes = sorted({r[0] for r in rows})
    channels = max(r[1] for r in rows) + 1
    out = np.full((len(classes), channels), np.nan)
    where = {c: i for i, c in enumerate(classes)}
    for cid, ch, v in rows:
        out[where[cid], ch] = np.nan if v is None else v
    if pooling == "mean" and np.isnan(out).all():
        raise UsageError("this index has no spatial means; use --pooling max, or re-ingest with --spatial-means")
    return classes, np.nan_to_num(out)


def _chains(con, class_ids: list[int]) -> list[list[int]] | None:
    """Each class's chain of ancestors in the classes table (self first), for classes with a WordNet
    id; None unless every class has one (an ImageNet-style dataset)."""
    rows = con.execute("SELECT id, parent_id, wnid FROM classes").fetchall()
    parent = {r[0]: r[1] for r in rows}
    wnid = {r[0]: r[2] for r in rows}
    if not class_ids or any(not wnid.get(c) for c in class_ids):
        return None
    chains = []
    for c in class_ids:
        chain, seen = [c], {c}
        while parent.get(chain[-1]) is not None and parent[chain[-1]] not in seen:
            chain.append(parent[chain[-1]])
            seen.add(chain[-1])
        chains.append(chain)
    return chains


def resolve_pooling(con, layer_id: int, pooling: str | None) -> str:
    """None (auto): mean when the index has spatial means (the global average pool a classifier
    reads, closest to the seed's vectorised last conv layer), else max."""
    if pooling is not None:
        return _check_pooling(pooling)
    has_mean = con.execute("SELECT count(*) FROM class_means cm JOIN neurons n ON n.id = cm.neuron_id "
                           "WHERE n.layer_id = ? AND cm.mean_spatial IS NOT NULL AND NOT isnan(cm.mean_spatial)",
                           [layer_id]).fetchone()[0]
    return "mean" if has_mean else "max"


def build(con, model: str | None = None, layer: str | None = None, pooling: str | None = None) -> dict:
    """Compute and store the category hierarchy of a model at a layer in a writable connection
    (pooling None: mean when spatial means are stored, else max)."""
    from neuronindex.store import execute, next_id
    from neuronindex.store.writer import insert

    model_id, model, lay = _layer(con, model, layer)
    pooling = resolve_pooling(con, lay["id"], pooling)
    classes, x = class_vectors(con, lay["id"], pooling)
    if len(classes) < 2:
        raise UsageError(f"a category hierarchy needs images of at least 2 classes; {model} {lay['name']} has "
                         f"{len(classes)}")
    h = category_hierarchy(cosine_distances(x))
    chains = _chains(con, classes)
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


def run(index_dir, model: str | None = None, layer: str | None = None, pooling: str | None = None,
        wait: bool = True) -> dict:
    """Build and publish the category hierarchy (the CLI's `neuronindex categories`)."""
    from neuronindex import store

    if not store.index_file(index_dir).is_file():
        from neuronindex.errors import IndexNotFoundError

        raise IndexNotFoundError(f"no index at {index_dir}; create one with `neuronindex ingest --index {index_dir} ...`")
    with store.staged(index_dir, wait=wait) as con:
        return build(con, model, layer, pooling)


# ------------------------------------------------------------------------------ prediction trees

def class_images(con, model_id: int, name: str) -> tuple[int, list[tuple[int, str, str]]]:
    """(class id, [(image id, path, source)]) of a class of the model's datasets, a leaf or an inner
    class (then the images of every class under it); by name or WordNet id."""
    rows = con.execute(
        "SELECT c.id, c.name, c.wnid FROM classes c WHERE c.dataset_id IN "
        "(SELECT dataset_id FROM ingests WHERE model_id = ?) ORDER BY c.id", [model_id]).fetchall()
    found = [r for r in rows if name in (r[1], r[2])]
    if not found:
        raise NotFoundError(f"no class {name!r} in this model's images{did_you_mean(name, [r[1] for r in rows])}")
    cid = found[0][0]
    images = con.execute(
        "WITH RECURSIVE under(id) AS (SELECT ?::INTEGER UNION SELECT c.id FROM classes c JOIN under u ON c.parent_id = u.id) "
        "SELECT i.id, i.path, d.source FROM images i JOIN datasets d ON d.id = i.dataset_id "
        "WHERE i.class_id IN (SELECT id FROM under) AND i.problem IS NULL ORDER BY i.id", [cid]).fetchall()
    return cid, images


def image_vectors(idx, model: str, layer_row: dict, images: list[tuple[int, str, str]], pooling: str,
                  batch_size: int = 32) -> np.ndarray:
    """(images, channels) pooled feature vectors of a layer, by one forward of the images."""
    import torch

    loaded, extractor, _, lock = idx._model(model, layer_row["name"])
    pre = loaded.preprocessing
    out = []
    for s in range(0, len(images), batch_size):
        batch = [np.asarray(pre.geometric(idx.load_image(p, src)), dtype=np.uint8) for _, p, src in images[s:s + batch_size]]
        with lock:
            maps = extractor(torch.from_numpy(np.stack(batch)))[layer_row["node"]]
            pooled = maps.amax((2, 3)) if pooling == "max" else maps.mean((2, 3))
            out.append(pooled.float().cpu().numpy())
    return np.concatenate(out)


def tree(index_dir, class_name: str, layer: str | None = None, model: str | None = None, pooling: str = "max",
         max_images: int | None = None, seed: int = 0, wait: bool = True) -> dict:
    """Build, store and return the filter prediction tree of a class at a layer (`neuronindex tree`)."""
    from neuronindex import api, store
    from neuronindex.settings import default
    from neuronindex.store import execute, next_id
    from neuronindex.store.writer import insert

    max_images = default("tree_max_images") if max_images is None else max_images
    if not isinstance(max_images, int) or max_images < 2:
        raise UsageError(f"--max-images must be a whole number >= 2, not {max_images!r}")
    _check_pooling(pooling)
    t0 = time.perf_counter()
    with api.Index(index_dir) as idx:
        model_id, model, lay = _layer(idx.con, model, layer)
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
    with store.staged(index_dir, wait=wait) as con:
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
        import pyarrow as pa

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


# ------------------------------------------------------------------------------ reading

def _rows(con, sql: str, params) -> list[dict]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def stored(con, model: str | None = None, layer: str | None = None, pooling: str | None = None) -> dict:
    """The stored hierarchy row of a model (at `layer`, else the deepest layer that has one)."""
    model_id, model, lay = _layer(con, model, layer)
    if pooling is not None:
        _check_pooling(pooling)
    found = _rows(con, "SELECT h.*, l.name AS layer, l.position, c.name AS centre, b.name AS hub FROM hierarchies h "
                       "JOIN layers l ON l.id = h.layer_id LEFT JOIN classes c ON c.id = h.centre_class_id "
                       "LEFT JOIN classes b ON b.id = h.hub_class_id WHERE h.model_id = ? "
                       + ("AND h.layer_id = ? " if layer is not None else "")
                       + ("AND h.pooling = ? " if pooling is not None else "")
                       + "ORDER BY l.position DESC, h.id DESC",
                  [model_id] + ([lay["id"]] if layer is not None else []) + ([pooling] if pooling else []))
    if found:  # the deepest layer; of its poolings, the one ingest chooses (mean when stored)
        found = [r for r in found if r["layer_id"] == found[0]["layer_id"]]
        auto = resolve_pooling(con, found[0]["layer_id"], None)
        found.sort(key=lambda r: r["pooling"] != auto)
    if not found:
        at = f" at {lay['name']}" if layer is not None else ""
        raise NotFoundError(f"no category hierarchy of {model}{at} yet; build it with "
                            f"`neuronindex categories INDEX --model {model} --layer {lay['name']}`")
    return {**found[0], "model": model}


def classes_of(con, h: dict) -> list[dict]:
    """The leaves of a stored hierarchy in dendrogram order, with their MST degree and eccentricity."""
    return _rows(con, "SELECT c.name AS class, c.wnid, n.node, n.leaf_order, n.mst_degree, n.eccentricity, "
                      "(SELECT count(*) FROM images i WHERE i.class_id = c.id) AS images "
                      "FROM hierarchy_nodes n JOIN classes c ON c.id = n.class_id WHERE n.hierarchy_id = ? "
                      "ORDER BY n.leaf_order", [h["id"]])


def nodes_of(con, h: dict) -> list[dict]:
    return _rows(con, "SELECT n.node, n.parent, c.name AS class, n.height, n.size, n.leaf_order FROM hierarchy_nodes n "
                      "LEFT JOIN classes c ON c.id = n.class_id WHERE n.hierarchy_id = ? ORDER BY n.node", [h["id"]])


def _leaf(con, h: dict, name: str) -> dict:
    leaves = classes_of(con, h)
    found = [r for r in leaves if name in (r["class"], r["wnid"])]
    if not found:
        raise NotFoundError(f"no class {name!r} in the hierarchy of {h['model']} {h['layer']}"
                            f"{did_you_mean(name, [r['class'] for r in leaves])}")
    return found[0]


def nearest_classes(con, h: dict, name: str, k: int = 5) -> list[dict]:
    """The k classes nearest to a class by category distance, with merge height and MST edge."""
    if not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be a whole number >= 1, not {k!r}")
    leaf = _leaf(con, h, name)
    return _rows(con, "SELECT b.name AS class, d.distance, d.cophenetic, d.in_mst FROM class_distances d "
                      "JOIN classes a ON a.id = d.class_a JOIN classes b ON b.id = d.class_b "
                      "WHERE d.hierarchy_id = ? AND a.name = ? ORDER BY d.distance, b.name LIMIT ?",
                 [h["id"], leaf["class"], k])


def subtree(con, h: dict, name: str, up: int = 1) -> tuple[dict, list[dict]]:
    """(the node `up` merges above a class, the classes under it in dendrogram order)."""
    if not isinstance(up, int) or up < 1:
        raise UsageError(f"up must be a whole number >= 1, not {up!r}")
    leaf = _leaf(con, h, name)
    nodes = {r["node"]: r for r in nodes_of(con, h)}
    node = leaf["node"]
    for _ in range(up):
        if nodes[node]["parent"] is None:
            break
        node = nodes[node]["parent"]
    return nodes[node], classes_under(list(nodes.values()), node)


def classes_under(nodes: list[dict], node: int) -> list[dict]:
    """The leaves (classes) under a node of a stored hierarchy, in dendrogram order."""
    children: dict[int, list[int]] = {}
    for r in nodes:
        if r["parent"] is not None:
            children.setdefault(r["parent"], []).append(r["node"])
    by_id = {r["node"]: r for r in nodes}
    stack, under = [node], []
    while stack:
        n = stack.pop()
        if by_id[n]["class"] is not None:
            under.append(by_id[n])
        stack += children.get(n, [])
    return sorted(under, key=lambda r: r["leaf_order"])


def stored_tree(con, class_name: str, layer: str | None = None, model: str | None = None,
                pooling: str = "max") -> tuple[dict, list[dict]]:
    """(the tree's row, its nodes with the critical filters' keys and the leaves' image paths)."""
    model_id, model, lay = _layer(con, model, layer)
    found = _rows(con, "SELECT t.*, c.name AS class, l.name AS layer FROM prediction_trees t "
                       "JOIN classes c ON c.id = t.class_id JOIN layers l ON l.id = t.layer_id "
                       "WHERE t.model_id = ? AND t.layer_id = ? AND (c.name = ? OR c.wnid = ?) AND t.pooling = ?",
                  [model_id, lay["id"], class_name, class_name, pooling])
    if not found:
        raise NotFoundError(f"no prediction tree of class {class_name!r} at {model} {lay['name']} yet; build it with "
                            f"`neuronindex tree INDEX --class {class_name} --layer {lay['name']}`")
    t = {**found[0], "model": model}
    nodes = _rows(con, "SELECT p.node, p.parent, p.image_id, i.path AS image, p.critical_channel, n.key AS critical, "
                       "p.distance, p.change, p.n_reachable FROM prediction_tree_nodes p "
                       "LEFT JOIN neurons n ON n.id = p.critical_neuron_id LEFT JOIN images i ON i.id = p.image_id "
                       "WHERE p.tree_id = ? ORDER BY p.node", [t["id"]])
    return t, nodes


def trees(con, model: str | None = None) -> list[dict]:
    """Every stored prediction tree (for the gallery's model page)."""
    return _rows(con, "SELECT m.name AS model, l.name AS layer, c.name AS class, t.pooling, t.n_images, t.n_filters, "
                      "t.created FROM prediction_trees t JOIN models m ON m.id = t.model_id JOIN layers l ON "
                      "l.id = t.layer_id JOIN classes c ON c.id = t.class_id "
                      + ("WHERE m.name = ? " if model else "") + "ORDER BY m.name, l.position, c.name",
                 [model] if model else [])
