"""Embeddings and FAISS indexes: build, save, load, search.

Spaces (stored as rows of `embeddings`; FAISS files under DIR/vectors/ are built from them):
  prototype  per layer: for each neuron, the L2-normalised, w-weighted mean of the layer's feature
             vector (all channels at the argmax unit) over its NF images
  signature  per model: each neuron's activations on the probe sample, centred and normalised
             (finds redundant neurons across layers; Zhang (CS231n))
  patch      per layer: the feature vector of every stored top crop (Yu et al. 2014's representation
             space); a hit names the crop and the neuron it belongs to

Search is by inner product on L2-normalised vectors (cosine). Up to EXACT_LIMIT vectors a flat
(exact) index is used; above it an IVF index whose nlist and nprobe are chosen automatically
(nprobe is raised until recall@10 against exact search reaches 0.95 on sampled queries), with
its parameters recorded beside the file. Each file carries a fingerprint of the rows it was
built from; a stale file is rebuilt on use.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import warnings
from pathlib import Path

import faiss
import numpy as np

from neuronindex.errors import StaleVectorsError
from neuronindex.settings import default
from neuronindex.store.directory import IndexDirectory

EXACT_LIMIT = default("exact_limit")
TARGET_RECALL = 0.95


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norms > 0, x / np.maximum(norms, 1e-12), 0).astype(np.float32)


def signatures(probe: np.ndarray) -> np.ndarray:
    """(P, C) probe activations -> (C, P) centred, L2-normalised signatures."""
    x = probe.T.astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    return normalize(x)


def build(vectors: np.ndarray, exact_limit: int = EXACT_LIMIT, seed: int = 0):
    """A FAISS index over L2-normalised vectors; returns (index, parameters)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if n <= exact_limit:
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return index, {"type": "flat", "n": n, "d": d}
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = vectors[rng.choice(n, min(n, nlist * 64), replace=False)]
    index.train(train)
    index.add(vectors)
    nprobe, recall = tune_nprobe(index, vectors, rng)
    return index, {"type": "ivf", "n": n, "d": d, "nlist": nlist, "nprobe": nprobe, "recall_at_10": recall}


def tune_nprobe(index, vectors: np.ndarray, rng, queries: int = 200, k: int = 10) -> tuple[int, float]:
    """Smallest power-of-two nprobe whose recall@k against exact search reaches TARGET_RECALL."""
    sample = vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)]
    noisy = normalize(sample + rng.normal(0, 0.05, sample.shape).astype(np.float32))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(noisy, k)
    nprobe, recall = 1, 0.0
    while nprobe <= index.nlist:
        index.nprobe = nprobe
        _, found = index.search(noisy, k)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
        if recall >= TARGET_RECALL:
            break
        nprobe *= 2
    index.nprobe = min(nprobe, index.nlist)
    return index.nprobe, recall


def fingerprint(ids: np.ndarray, vectors: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:32]


def rows(con, space: str, group: int):
    """(ids (n, 2), vectors (n, d) float32) of a space and group, through Arrow: one buffer per
    column instead of a Python list per vector (265,000 patch vectors of SqueezeNet: 3 s, not 26)."""
    column = "model_id" if space == "signature" else "layer_id"
    result = con.execute(f"SELECT neuron_id, coalesce(rank, 0) AS rank, vector FROM embeddings WHERE space = ? "
                         f"AND {column} = ? ORDER BY neuron_id, rank", [space, group])
    with warnings.catch_warnings():  # DuckDB notes the one extra copy a DB-API result's Arrow output makes
        warnings.simplefilter("ignore", UserWarning)
        table = result.to_arrow_table() if hasattr(result, "to_arrow_table") else result.fetch_arrow_table()
    if table.num_rows == 0:
        return np.zeros((0, 2), np.int64), np.zeros((0, 0), np.float32)
    ids = np.column_stack([table.column("neuron_id").to_numpy(), table.column("rank").to_numpy()]).astype(np.int64)
    flat = table.column("vector").combine_chunks()
    values = flat.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return ids, values.reshape(table.num_rows, -1)


class VectorStore:
    """FAISS files for the spaces of one index directory, kept in step with `embeddings`.

    A space and group is read (and its file checked or rebuilt) once per store: a store lives as
    long as one opened version of the index, which cannot change under it. Methods that read rows
    take the caller's connection (a thread's own cursor) or use the store's.
    """

    def __init__(self, directory: "str | Path | IndexDirectory", con=None):
        self.directory = IndexDirectory(directory).vectors
        self.con = con
        self._cache: dict = {}
        self._lock = threading.Lock()

    def get(self, space: str, group: int, rebuild: bool = True, con=None):
        """(faiss index, ids (n, 2) of neuron_id and rank, parameters) for a space and layer/model."""
        key = (space, group)
        cached = self._cache.get(key)
        if cached is None:
            with self._lock:  # one thread loads (or builds) a space; the others wait for it
                cached = self._cache.get(key)
                if cached is None:
                    cached = self._load(space, group, rebuild, con or self.con)
                    self._cache[key] = cached
        return cached

    def _load(self, space: str, group: int, rebuild: bool, con):
        ids, vectors = rows(con, space, group)
        if len(vectors) == 0:
            return None, ids, {"type": "empty"}
        if len(vectors) <= EXACT_LIMIT:
            # an exact index is a copy of the rows it was read from: made in memory, never kept as a
            # file (SqueezeNet's 265,000 patch vectors: 387 MB of files saved, nothing to go stale)
            index, meta = build(vectors, exact_limit=EXACT_LIMIT)
            return index, ids, meta
        fp = fingerprint(ids, vectors)
        path = self.directory / f"{space}-{group}.faiss"
        meta_path = path.with_suffix(".json")
        if path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") == fp:
                index = faiss.read_index(str(path))
                if meta.get("type") == "ivf":
                    index.nprobe = meta["nprobe"]
                return index, ids, meta
            if not rebuild:
                raise StaleVectorsError(f"{path} is stale (built from other rows); rebuild it with `neuronindex vectors DIR`")
        index, meta = build(vectors, exact_limit=EXACT_LIMIT)
        meta["fingerprint"] = fp
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            faiss.write_index(index, str(tmp))
            tmp.replace(path)
            meta_path.write_text(json.dumps(meta, indent=2))
        except OSError:
            pass  # a read-only directory: keep the freshly built index in memory only
        return index, ids, meta

    def search(self, space: str, group: int, query: np.ndarray, k: int, con=None):
        """[(neuron_id, rank, score)] nearest first."""
        index, ids, _ = self.get(space, group, con=con)
        if index is None:
            return []
        scores, found = index.search(normalize(query.reshape(1, -1)), min(k, len(ids)))
        return [(int(ids[i][0]), int(ids[i][1]), float(s)) for s, i in zip(scores[0], found[0]) if i >= 0]

    def build_all(self, progress: bool = False) -> list[dict]:
        """Build (or check) the file of every space and group that needs one: those above the exact
        limit, whose IVF index is trained. Exact spaces are listed, made in memory on first search;
        files an older version kept for them are removed."""
        built = []
        for space, group, n, d in self.con.execute(
                "SELECT space, CASE WHEN space = 'signature' THEN model_id ELSE layer_id END AS g, count(*), "
                "max(len(vector)) FROM embeddings GROUP BY ALL ORDER BY 1, 2").fetchall():
            if n > EXACT_LIMIT:
                _, ids, meta = self.get(space, group)
                built.append({"space": space, "group": group, "vectors": len(ids),
                              **{k: v for k, v in meta.items() if k != "fingerprint"}})
                continue
            for old in (self.directory / f"{space}-{group}.faiss", self.directory / f"{space}-{group}.json"):
                try:
                    old.unlink()
                except OSError:
                    pass
            built.append({"space": space, "group": group, "vectors": n, "type": "flat", "n": n, "d": d,
                          "file": "none (exact: made in memory when first searched)"})
        return built
