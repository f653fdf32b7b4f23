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

from dataclasses import dataclass

import numpy as np

from neuronindex.errors import UsageError

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


# ------------------------------------------------------------------------------ prediction trees


# ------------------------------------------------------------------------------ reading


