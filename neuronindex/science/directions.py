"""Directions (Zhang (CS231n)): latent units of a layer beside its channels, indexed like neurons.

A *direction* of a layer is a vector over its channels; its map is the projection of the
layer's map on it, and from there on it is a unit like any neuron: top and bottom images with
locations, a Neuron Feature, colour and class indexes, embeddings, a page.

  pooled     per image, one value per channel: the spatial maximum (the neurons' activation;
             default) or the spatial mean of the channel's map
  standard   each channel standardised over the images (Zhang (CS231n)'s normalised matrix);
             mu_c, sigma_c: the pooled mean and standard deviation of channel c
  svd        right singular vectors of the standardised image x channel matrix: eigenvectors
             of its correlation matrix R (C x C), accumulated in pass 1 by Chan's merge of
             per-batch means and co-moments, so memory is O(C^2), never O(images), and shards
             merge exactly. Rank: `kaiser` (default: eigenvalues > 1, i.e. components carrying
             more than one standardised channel), `var:F` (the fewest reaching a share F of
             the variance), `sv:S` (Zhang (CS231n)'s cut-off: singular values >= S) or a number;
             always at most `svd_max` (default 8, Zhang (CS231n) kept 8 for pool5).
  random     `random_n` unit vectors whose variance u'Ru reaches the `random_quantile` quantile
             of the variances of 1,000 random unit vectors (Zhang (CS231n)'s variance cut-off, as a
             quantile because an absolute one depends on the data), plus `random_n`
             unconstrained ones as Zhang (CS231n)'s baseline (filter = 'none')
  user       a vector over the layer's channels (a concept vector), added to a stored index
             with `neuronindex directions add`

A direction u (unit length in the standardised space) has the map
  m(y, x) = sum_c w_c (a_c(y, x) - mu_c),   w = u / sigma
whose spatial maximum is its activation (argmax: its location), and whose spatial *minimum*
gives its bottom images (argmin: their location): the bottom list of a direction is the top
list of -u. Its variance is u'Ru (an SVD direction's eigenvalue), its explained share
u'Ru / trace R, its singular value sqrt(n u'Ru) (Zhang (CS231n)'s scale).

The projection maps are not available in pass 1 (the SVD needs all of pass 1 first), so one
more pass (`units_pass`) forwards every image to the deepest layer with directions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuronindex.errors import UsageError
from neuronindex.names import valid_name as checked_name

KINDS = ("svd", "random", "user")
RANDOM_POOL = 1000


# ---------------------------------------------------------------------------- statistics

class Covariance:
    """Streaming mean and co-moment of the pooled activations of several layers (blocks of
    channels side by side), merged per batch and across shards by Chan's formula."""

    def __init__(self, blocks: list[int]):
        self.blocks = list(blocks)
        self.n = 0
        self.mean = [np.zeros(c) for c in self.blocks]
        self.m2 = [np.zeros((c, c)) for c in self.blocks]

    def add(self, pooled) -> None:
        """pooled (B, sum(blocks)): one value per image and channel."""
        x = np.asarray(pooled.cpu().numpy() if hasattr(pooled, "cpu") else pooled, dtype=np.float64)
        if x.shape[0] == 0:
            return
        start = 0
        nb = x.shape[0]
        for i, c in enumerate(self.blocks):
            part = x[:, start:start + c]
            start += c
            mb = part.mean(0)
            d = part - mb
            self._fold(i, nb, mb, d.T @ d)
        self.n += nb

    def _fold(self, i: int, nb: int, mb, m2b) -> None:
        na = self.n
        n = na + nb
        delta = mb - self.mean[i]
        self.m2[i] += m2b + np.outer(delta, delta) * (na * nb / n)
        self.mean[i] += delta * (nb / n)

    def merge(self, other: "Covariance") -> None:
        if other.blocks != self.blocks:
            raise ValueError("the states hold covariances of different layers")
        if other.n == 0:
            return
        for i in range(len(self.blocks)):
            self._fold(i, other.n, other.mean[i], other.m2[i])
        self.n += other.n

    def state_dict(self) -> dict:
        state = {"cov_meta": np.array([self.n, *self.blocks], dtype=np.int64)}
        for i in range(len(self.blocks)):
            state[f"cov_mean_{i}"] = self.mean[i]
            state[f"cov_m2_{i}"] = self.m2[i]
        return state

    @classmethod
    def from_state(cls, state: dict) -> "Covariance":
        meta = [int(v) for v in state["cov_meta"]]
        cov = cls(meta[1:])
        cov.n = meta[0]
        cov.mean = [np.array(state[f"cov_mean_{i}"], dtype=np.float64) for i in range(len(cov.blocks))]
        cov.m2 = [np.array(state[f"cov_m2_{i}"], dtype=np.float64) for i in range(len(cov.blocks))]
        return cov

    def layer(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(mean, std, correlation matrix, n) of block i (population statistics)."""
        n = max(self.n, 1)
        cov = self.m2[i] / n
        std = np.sqrt(np.maximum(np.diag(cov), 0.0))
        live = std > 1e-12 * max(float(std.max(initial=0.0)), 1e-30)
        inv = np.where(live, 1.0 / np.where(live, std, 1.0), 0.0)
        corr = cov * inv[:, None] * inv[None, :]
        return self.mean[i].copy(), np.where(live, std, 0.0), corr, self.n


# ---------------------------------------------------------------------------- directions

@dataclass
class DirectionSpec:
    """What directions an ingest computes (parsed from the CLI / IngestParams)."""

    kinds: tuple[str, ...] = ()
    pooling: str = "max"
    svd_rank: str = "kaiser"
    svd_max: int = 8
    random_n: int = 4
    random_quantile: float = 0.95
    seed: int = 0

    @classmethod
    def parse(cls, kinds: str | None, **kw) -> "DirectionSpec":
        names = [k.strip() for k in (kinds or "").split(",") if k.strip() and k.strip() != "none"]
        bad = [k for k in names if k not in ("svd", "random")]
        if bad:
            raise UsageError(f"unknown direction kind {bad[0]!r}; --directions takes svd, random, svd,random or none")
        spec = cls(tuple(dict.fromkeys(names)), **kw)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.pooling not in ("max", "mean"):
            raise UsageError("--direction-pooling is max or mean")
        rank_rule(self.svd_rank)
        if self.svd_max < 1:
            raise UsageError("--svd-max must be at least 1")
        if self.random_n < 0:
            raise UsageError("--random-directions must be 0 or more")
        if not 0 <= self.random_quantile < 1:
            raise UsageError("--random-quantile must be in [0, 1)")


def rank_rule(text: str) -> tuple[str, float]:
    """Parse a rank rule: kaiser | var:F | sv:S | N."""
    text = str(text).strip()
    if text == "kaiser":
        return "kaiser", 1.0
    m = re.fullmatch(r"(var|sv):([0-9.eE+-]+)", text)
    try:
        if m:
            value = float(m.group(2))
            if m.group(1) == "var" and not 0 < value <= 1:
                raise ValueError
            return m.group(1), value
        n = int(text)
        if n < 1:
            raise ValueError
        return "n", float(n)
    except ValueError:
        raise UsageError(f"--svd-rank {text!r} is not a rank rule; use kaiser, var:0.8 (variance share), "
                         "sv:200 (singular-value cut-off) or a number") from None


@dataclass
class LayerDirections:
    """The directions of one layer: unit vectors u in the standardised space and what maps use."""

    names: list[str]
    kinds: list[str]
    basis: np.ndarray  # (D, C) unit vectors in the standardised space
    mean: np.ndarray  # (C,) mu
    std: np.ndarray  # (C,) sigma (0: constant channel, left out)
    n: int  # images behind mu, sigma, R
    pooling: str
    variance: np.ndarray  # (D,) u'Ru
    trace: float  # trace R: the number of non-constant channels
    filters: list = field(default_factory=list)  # per direction: 'tail', 'none' or None
    ordinals: list = field(default_factory=list)  # per direction: 1-based index within its kind
    spectrum: np.ndarray | None = None  # every singular value of the standardised matrix, descending

    @property
    def weights(self) -> np.ndarray:
        """(D, C) w = u / sigma: the map is w . (a - mu)."""
        inv = np.where(self.std > 0, 1.0 / np.where(self.std > 0, self.std, 1.0), 0.0)
        return self.basis * inv[None, :]

    @property
    def offsets(self) -> np.ndarray:
        return -(self.weights @ self.mean)

    def __len__(self) -> int:
        return len(self.names)

    def rows(self) -> list[dict]:
        weights, offsets = self.weights, self.offsets
        out = []
        for j in range(len(self)):
            var = float(self.variance[j])
            out.append({"name": self.names[j], "kind": self.kinds[j], "ordinal": self.ordinals[j],
                        "filter": self.filters[j], "pooling": self.pooling, "variance": var,
                        "explained": var / self.trace if self.trace > 0 else None,
                        "singular_value": float(np.sqrt(max(var, 0.0) * self.n)), "n_images": self.n,
                        "vector": self.basis[j].astype(np.float32), "weights": weights[j].astype(np.float32),
                        "offset": float(offsets[j])})
        return out


@dataclass
class StoredDirections:
    """A layer's directions as an index stores them: what their maps need (recompute, directions add)."""

    names: list[str]
    kinds: list[str]
    weights: np.ndarray  # (D, C)
    offsets: np.ndarray  # (D,)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def load(cls, con, layer_id: int) -> "StoredDirections | None":
        from neuronindex.store import execute

        rows = execute(con, 'SELECT d.name, d.kind, d.weights, d."offset" FROM directions d JOIN neurons n '
                            'ON n.id = d.neuron_id WHERE d.layer_id = ? ORDER BY n.channel', [layer_id])
        if not rows:
            return None
        return cls([r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows], dtype=np.float64),
                   np.array([r[3] for r in rows], dtype=np.float64))


def _signed(vectors: np.ndarray) -> np.ndarray:
    """Each row's sign fixed so that its largest-magnitude entry is positive (an SVD's sign is arbitrary)."""
    idx = np.abs(vectors).argmax(1)
    sign = np.sign(vectors[np.arange(len(vectors)), idx])
    return vectors * np.where(sign == 0, 1.0, sign)[:, None]


def svd_directions(corr: np.ndarray, n: int, rule: str, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading right singular vectors (D, C) and eigenvalues (D,) of the standardised matrix
    whose correlation matrix is `corr`, by the rank rule. The statistic is C x C, so a dense
    symmetric eigendecomposition is exact and fast (C = 2,048: well under a second);
    scikit-learn's randomized_svd takes over for wider layers, where only the leading few are
    needed."""
    C = corr.shape[0]
    if C == 0:
        return np.zeros((0, 0)), np.zeros(0)
    kind, value = rank_rule(rule)
    if C > 4096:
        from sklearn.utils.extmath import randomized_svd

        _, s, vt = randomized_svd(corr, n_components=min(C, cap + 10), n_iter=7, random_state=0)
        evals, evecs = s, vt
    else:
        evals, vecs = np.linalg.eigh(corr)
        order = np.argsort(-evals, kind="stable")
        evals, evecs = evals[order], vecs[:, order].T
    evals = np.maximum(evals, 0.0)
    trace = float(np.trace(corr))
    if kind == "kaiser":
        keep = int((evals > value).sum())
    elif kind == "var":
        share = np.cumsum(evals) / trace if trace > 0 else np.ones_like(evals)
        keep = int(np.searchsorted(share, value - 1e-12) + 1)
    elif kind == "sv":
        keep = int((np.sqrt(evals * n) >= value).sum())
    else:
        keep = int(value)
    keep = max(1, min(keep, cap, int((evals > 1e-12).sum()) or 1, len(evals)))
    return _signed(evecs[:keep]), evals[:keep]


def random_directions(corr: np.ndarray, n_keep: int, quantile: float, seed: int) -> tuple:
    """(tail vectors, baseline vectors), each (n_keep, C) unit vectors: the tail ones drawn
    until n_keep pass the quantile of the variances of RANDOM_POOL random directions."""
    C = corr.shape[0]
    rng = np.random.default_rng(seed)
    if C == 0 or n_keep == 0:
        return np.zeros((0, C)), np.zeros((0, C))
    live = np.diag(corr) > 0

    def draw(k):
        v = rng.standard_normal((k, C)) * live[None, :]
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.where(norms > 0, norms, 1.0)

    baseline = draw(n_keep)
    pool = draw(RANDOM_POOL)
    var = np.einsum("kc,cd,kd->k", pool, corr, pool)
    cut = float(np.quantile(var, quantile))
    tail = pool[var >= cut][:n_keep]
    while len(tail) < n_keep:  # a pool with fewer tail draws than asked (tiny pools): draw more
        more = draw(RANDOM_POOL)
        tail = np.concatenate([tail, more[np.einsum("kc,cd,kd->k", more, corr, more) >= cut]])[:n_keep]
    return tail, baseline


def user_direction(vector: np.ndarray, mean: np.ndarray, std: np.ndarray, channels: int, name: str) -> np.ndarray:
    """A user's vector over raw channels -> unit vector u in the standardised space (u / sigma
    is then parallel to the given vector, so the map is a positive multiple of v . (a - mu))."""
    v = np.asarray(vector, dtype=np.float64).ravel()
    if v.shape != (channels,):
        raise UsageError(f"direction {name!r} has {v.size} values but the layer has {channels} channels; "
                         f"give one value per channel")
    if not np.isfinite(v).all():
        raise UsageError(f"direction {name!r} has NaN or infinite values")
    u = v * std
    norm = np.linalg.norm(u)
    if norm == 0:
        raise UsageError(f"direction {name!r} is zero on every channel that varies; give a non-zero vector")
    return u / norm


def compute(cov: Covariance, spec: DirectionSpec, channels: list[int]) -> list[LayerDirections | None]:
    """Per selected layer, its SVD and random directions (None where there are none)."""
    out: list[LayerDirections | None] = []
    for i, C in enumerate(channels):
        mean, std, corr, n = cov.layer(i)
        vecs, names, kinds, filters, ordinals = [], [], [], [], []

        def add(v, kind, filt=None):
            ordinal = kinds.count(kind) + 1
            vecs.append(v)
            kinds.append(kind)
            names.append(f"{kind}{ordinal}")
            filters.append(filt)
            ordinals.append(ordinal)

        if "svd" in spec.kinds:
            v, _ = svd_directions(corr, n, spec.svd_rank, spec.svd_max)
            for row in v:
                add(row, "svd")
        if "random" in spec.kinds:
            tail, base = random_directions(corr, spec.random_n, spec.random_quantile, spec.seed + i)
            for row in tail:
                add(row, "random", "tail")
            for row in base:
                add(row, "random", "none")
        if not vecs:
            out.append(None)
            continue
        basis = np.stack(vecs)
        variance = np.einsum("kc,cd,kd->k", basis, corr, basis)
        spectrum = np.sqrt(np.maximum(np.sort(np.linalg.eigvalsh(corr))[::-1], 0) * n) if C <= 4096 else None
        out.append(LayerDirections(names, kinds, basis, mean, std, n, spec.pooling, variance,
                                   float(np.trace(corr)), filters, ordinals, spectrum))
    return out


def valid_name(name: str) -> str:
    """A user direction's name: a name as models and layers have (names.valid_name) that starts
    with a letter (a digit would read as a channel) and is not a computed direction's."""
    name = checked_name(name, "direction name")
    if not name[0].isalpha():
        raise UsageError(f"direction name {name!r} must start with a letter")
    if re.fullmatch(r"(svd|random)\d+", name):
        raise UsageError(f"direction name {name!r} is reserved for computed directions; choose another")
    return name


# ---------------------------------------------------------------------------- maps

class Projector:
    """Appends each layer's direction maps to its map: (B, C, H, W) -> (B, C + D, H, W)."""

    def __init__(self, nodes: list[str], directions: list):
        import torch

        self.by_node = {}
        for node, d in zip(nodes, directions):
            if d is not None and len(d):
                self.by_node[node] = (torch.from_numpy(d.weights.astype(np.float32)),
                                      torch.from_numpy(d.offsets.astype(np.float32)))

    def __bool__(self) -> bool:
        return bool(self.by_node)

    def project(self, node: str, a):
        """The direction maps (B, D, H, W) of a layer's map a."""
        import torch

        w, b = self.by_node[node]
        w, b = w.to(a.device, a.dtype), b.to(a.device, a.dtype)
        return torch.einsum("dc,bchw->bdhw", w, a) + b.view(1, -1, 1, 1)

    def extend_vectors(self, node: str, v):
        """Vectors (n, C) of a layer's channels -> (n, C + D) with its direction values appended."""
        import torch

        if node not in self.by_node:
            return v
        w, b = self.by_node[node]
        return torch.cat([v, v @ w.to(v.device, v.dtype).T + b.to(v.device, v.dtype)], 1)

    def extend(self, maps: dict) -> dict:
        import torch

        return {n: torch.cat([m, self.project(n, m)], 1) if n in self.by_node else m for n, m in maps.items()}


def extended_field(f, d: int):
    """The layer's field with d direction units appended: each sees the union of all channels'."""
    from neuronindex.nets.receptive import Field

    if f is None or d == 0:
        return f
    u = f.union_all()
    return Field(np.concatenate([f.start, u.start[:1].repeat(d, 0)]), np.concatenate([f.end, u.end[:1].repeat(d, 0)]),
                 f.stride.copy())


def extended_selections(selections, directions):
    """Selections whose layers hold C + D units (channels, then directions) for pass 2 and the indexes."""
    from dataclasses import replace

    out = []
    for sel, d in zip(selections, directions):
        n = len(d) if d is not None else 0
        out.append(sel if n == 0 else replace(sel, layer=replace(sel.layer, channels=sel.layer.channels + n,
                                                                  field=extended_field(sel.layer.field, n))))
    return out


# ---------------------------------------------------------------------------- the units pass

def units_pass(run, directions: list, progress: bool = True) -> list[dict | None]:
    """One more pass over every image for what pass 1 could not know: each direction's top and
    bottom lists with locations and its statistics, as a neuron's, over its projection map.

    Returns, per layer, the direction units' results (the keys of `LayerStats.result`, with
    `bottom_*` from the negated maps, `act_min` and `pooled_var`), or None.
    """
    import torch
    from tqdm import tqdm

    from neuronindex.nets.extract import Extractor, image_batches
    from neuronindex.science.stats import LayerStats, split
    from neuronindex.nets.summaries import combine, summarize

    p = run.params
    nodes = [s.layer.name for s in run.selections]
    sizes = [len(d) if d is not None else 0 for d in directions]
    positions = [q for q in run.positions() if q not in run.problems]
    if not sum(sizes) or not positions:
        return [None] * len(nodes)
    projector = Projector(nodes, directions)
    # the forward stops at the deepest layer with directions
    wanted = [n for n, s in zip(nodes, sizes) if s]
    extractor = Extractor(run.loaded, wanted, p.device, p.amp)
    unit_channels = [2 * s for s in sizes if s]
    stats = LayerStats(sum(unit_channels), p.top_k, p.curve_len, len(run.label_names), p.probe_size, p.device)
    pooled_sum = [np.zeros(s) for s in sizes]
    pooled_sq = [np.zeros(s) for s in sizes]
    label_index = {name: i for i, name in enumerate(run.label_names)}
    labels = torch.tensor([label_index.get(r.label, -1) if r.label is not None else -1 for r in run.images.images],
                          dtype=torch.long)
    bar = tqdm(total=len(positions), unit="img", desc="directions: projection maps", disable=not progress,
               dynamic_ncols=True)
    for batch, pos, problems in image_batches(run.images, run.loaded.preprocessing, p.batch_size, p.workers, positions):
        ok = torch.tensor([not q for q in problems], dtype=torch.bool)
        bar.update(len(problems))
        if not bool(ok.any()):
            continue
        maps = extractor(batch[ok])
        pos = pos[ok]
        parts = []
        for li, node in enumerate(nodes):
            if not sizes[li]:
                continue
            a = maps[node]
            proj = projector.project(node, a)
            pooled = (a.amax(dim=(2, 3)) if directions[li].pooling == "max" else a.mean(dim=(2, 3))).double()
            w, b0 = projector.by_node[node]
            pp = (pooled @ w.to(pooled.device).double().T + b0.to(pooled.device).double()).cpu().numpy()
            pooled_sum[li] += pp.sum(0)
            pooled_sq[li] += (pp * pp).sum(0)
            both = torch.cat([proj, -proj], 1).float().cpu().contiguous()
            # a threshold of -inf: every pair gets its location (a few units per layer)
            parts.append(summarize(both, torch.full((both.shape[1],), -float("inf"))))
        stats.add_summary(combine(parts), pos, labels[pos])
    bar.close()
    parts = split(stats.result(), unit_channels)
    out: list[dict | None] = []
    it = iter(parts)
    for li, s in enumerate(sizes):
        if not s:
            out.append(None)
            continue
        res, neg = split(next(it), [s, s])
        low = neg["top_values"][:, : p.bottom_k]
        res["bottom_values"] = np.where(np.isfinite(low), -low, np.nan)
        res["bottom_ids"] = neg["top_ids"][:, : p.bottom_k]
        res["bottom_y"] = neg["top_y"][:, : p.bottom_k].astype(np.int64)
        res["bottom_x"] = neg["top_x"][:, : p.bottom_k].astype(np.int64)
        res["act_min"] = -neg["act_max"]
        n = max(stats.count, 1)
        mean = pooled_sum[li] / n
        res["pooled_var"] = np.maximum(pooled_sq[li] / n - mean ** 2, 0.0)
        out.append(res)
    return out


def extend_results(results: list[dict], units: list[dict | None]) -> list[dict]:
    """Each layer's results with its direction units appended after its channels."""
    from neuronindex.science.stats import PER_CLASS_KEYS, WHOLE_KEYS

    out = []
    for res, u in zip(results, units):
        if u is None:
            out.append(res)
            continue
        merged = {}
        for key, value in res.items():
            if key in PER_CLASS_KEYS and value is not None and u.get(key) is None:
                # what the units pass does not take (spatial means): NaN for the directions
                merged[key] = np.concatenate([value, np.full((value.shape[0], len(u["act_max"])), np.nan)], axis=1)
            elif key not in u or value is None or u[key] is None or key in WHOLE_KEYS:
                merged[key] = value
            elif key in PER_CLASS_KEYS:
                merged[key] = np.concatenate([value, u[key]], axis=1)
            else:
                a, b = np.asarray(value), np.asarray(u[key])
                if a.ndim == 2 and a.shape[1] != b.shape[1]:  # lists of different lengths
                    width = max(a.shape[1], b.shape[1])
                    a, b = _pad(a, width), _pad(b, width)
                merged[key] = np.concatenate([a, b], axis=0)
        C = len(res["act_max"])
        merged["act_min"] = np.concatenate([np.full(C, np.nan), u["act_min"]])
        merged["pooled_var"] = u["pooled_var"]  # per direction
        out.append(merged)
    return out


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    fill = {"f": -np.inf, "i": -1, "u": 0, "b": False}[a.dtype.kind]
    return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)


# ---------------------------------------------------------------------------- user directions

def load_vectors(path: str) -> np.ndarray:
    """A .npy file (C,) or (D, C), or a text file of numbers (one direction per line)."""

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"vector file {path} does not exist")
    try:
        v = np.load(p, allow_pickle=False) if p.suffix == ".npy" else np.loadtxt(p, ndmin=1)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot read {path} as a vector ({exc}); give a .npy array or numbers as text") from None
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.size == 0:
        raise UsageError(f"{path} holds an array of shape {v.shape}; give (channels,) or (directions, channels)")
    return v


def add(index_dir, layer: str, vectors: np.ndarray, names: list[str] | None = None, model: str | None = None,
        progress: bool = True, wait: bool = True) -> dict:
    """Index user directions (rows of `vectors`, over the layer's channels) of a stored layer, as
    an ingest does its directions: one pass over the ingest's images for their top and bottom
    lists, then pass 2 and the indexes for the new units only; published atomically."""
    import json

    from neuronindex import store
    from neuronindex.jobs.derive import StoredIngest, run_all
    from neuronindex.errors import IngestError, NotFoundError, did_you_mean
    from neuronindex.jobs.ingest import IngestParams, build_vectors, prepare
    from neuronindex.nets.models import Preprocessing
    from neuronindex.store import execute
    from neuronindex.science.stats import units_of
    from neuronindex.store.writer import write_directions, write_units

    con = store.connect(index_dir)
    try:
        models = [r[0] for r in execute(con, "SELECT name FROM models ORDER BY id")]
        if model is None and "/" in layer:
            model, layer = layer.split("/", 1)
        if model is None:
            if len(models) != 1:
                raise UsageError(f"this index holds {len(models)} models; name one with --model or MODEL/LAYER")
            model = models[0]
        if model not in models:
            raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, models)}")
        rows = execute(con, "SELECT l.id, l.name, l.channels, i.id, m.spec, m.weights, m.preprocessing, i.parameters, "
                            "d.source, m.fingerprint, d.fingerprint, d.labels, d.class_list, m.id "
                            "FROM layers l JOIN models m ON m.id = l.model_id JOIN ingests i ON i.id = l.ingest_id "
                            "JOIN datasets d ON d.id = i.dataset_id WHERE m.name = ?", [model])
        by_name = {r[1]: r for r in rows}
        if layer not in by_name:
            raise NotFoundError(f"model {model} has no layer {layer!r}{did_you_mean(layer, list(by_name))}; "
                                f"its layers: {', '.join(by_name)}")
        (layer_id, layer_name, C, ingest_id, spec, weights, pre, params, source, model_fp, data_fp, labels,
         class_list, model_id) = by_name[layer]
        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.ndim == 1:
            vectors = vectors[None]
        taken = {r[0] for r in execute(con, "SELECT unit FROM neurons WHERE layer_id = ?", [layer_id])}
        first_user = 1 + int(execute(con, "SELECT count(*) FROM directions WHERE layer_id = ? AND kind = 'user'",
                                     [layer_id])[0][0])
        names = list(names) if names else [f"user{first_user + j}" for j in range(len(vectors))]
        if len(names) != len(vectors):
            raise UsageError(f"{len(names)} names for {len(vectors)} vectors; give one name per vector")
        for n in names:
            if not re.fullmatch(r"user\d+", n):
                valid_name(n)
            if n in taken:
                raise UsageError(f"layer {layer} already has a unit named {n!r}; choose another --name")
        if len(set(names)) != len(names):
            raise UsageError("two vectors have the same name; give each its own")
        stats = execute(con, "SELECT act_mean, act_std FROM neurons WHERE layer_id = ? AND kind = 'channel' "
                             "ORDER BY channel", [layer_id])
        next_channel = int(execute(con, "SELECT max(channel) + 1 FROM neurons WHERE layer_id = ?", [layer_id])[0][0])
        existing = execute(con, "SELECT id FROM neurons WHERE layer_id = ? AND kind = 'channel' ORDER BY channel",
                           [layer_id])
        first_image = int(execute(con, "SELECT min(id) - min(position) FROM images WHERE dataset_id = "
                                       "(SELECT dataset_id FROM ingests WHERE id = ?)", [ingest_id])[0][0])
        label_rows = dict(execute(con, "SELECT c.name, c.id FROM classes c JOIN ingests i ON i.dataset_id = c.dataset_id "
                                       "WHERE i.id = ?", [ingest_id]))
        model_name = model
    finally:
        con.close()
    mean = np.array([r[0] or 0.0 for r in stats])
    std = np.array([r[1] or 0.0 for r in stats])
    basis = np.stack([user_direction(v, mean, std, C, n) for v, n in zip(vectors, names)])
    p = json.loads(params)
    p = IngestParams(**{k: v for k, v in p.items() if k in IngestParams.__dataclass_fields__})
    p.shard, p.directions = None, "none"
    labels = labels if labels not in (None, "manifest", "torchvision") else "auto"
    run = prepare(spec, source, [layer_name], weights=weights, name=model_name,
                  preprocessing=Preprocessing.from_json(pre), params=p, labels=labels, class_list=class_list)
    if run.meta["model_fingerprint"] != model_fp:
        raise IngestError(f"the weights of {model_name} ({weights}) changed since it was ingested; ingest it again")
    if run.meta["data_fingerprint"] != data_fp:
        raise IngestError(f"the images of {source} changed since {model_name} was ingested; ingest it again")
    n_live = int((std > 0).sum())
    d = LayerDirections(names, ["user"] * len(names), basis, mean, std, 0, "max", np.zeros(len(names)),
                        float(n_live), [None] * len(names), list(range(first_user, first_user + len(names))))
    run.directions = [d]
    empty = _empty_results(C, p, len(run.label_names))
    units = units_pass(run, [d], progress=progress)[0]
    if units is None:
        raise IngestError("no image of the ingest could be read again; check that its images are still there")
    from neuronindex.science.selectivity import dead_neurons

    units["dead"] = dead_neurons(units["act_max"], units["act_std"])
    units["weak"] = np.zeros(len(d), dtype=bool)
    units["kind"], units["unit"] = ["user"] * len(d), list(names)
    d.variance = units["pooled_var"].copy()  # w . pooled + b has variance u'Ru for max pooling
    d.n = int(units["count"])
    results = extend_results([empty], [units])
    # the images behind the new units (the channels' part of `results` is empty)
    results[0]["count"], results[0]["class_count"] = units["count"], units["class_count"]
    if units.get("probe") is not None:  # the new units' signatures (the channels' rows stay as stored)
        results[0]["probe"] = np.concatenate([np.zeros((units["probe"].shape[0], C), np.float32), units["probe"]], 1)
        results[0]["probe_ids"] = units["probe_ids"]
    derived = run_all(run, results, progress=progress, spill=Path(index_dir) / ".work")
    derived.only = np.arange(C, C + len(d))
    with store.staged(index_dir, wait=wait) as wcon:
        from neuronindex.store import next_id

        base = next_id(wcon, "neurons")
        new_ids = np.arange(base, base + len(d))
        label_class_ids = np.array([label_rows[n] for n in run.label_names], dtype=np.int64)
        new = np.arange(C, C + len(d))  # the new units in this run's extended map
        field_ = extended_field(run.selections[0].layer.field, len(d))
        channels = np.arange(next_channel, next_channel + len(d))  # where they go in the stored layer
        write_units(wcon, units_of(results[0], new), new_ids, channels, f"{model_name}/{layer_name}/", model_id,
                    layer_id, ingest_id,
                    field_.rows(new) if field_ is not None else None,
                    first_image, label_class_ids)
        write_directions(wcon, new_ids, layer_id, d, units["pooled_var"])
        ids = np.concatenate([np.array([r[0] for r in existing], dtype=np.int64), new_ids])
        derived.write(wcon, StoredIngest(ingest_id, [ids]))
    build_vectors(index_dir)
    return {"model": model_name, "layer": layer_name, "directions": [f"{model_name}/{layer_name}/{n}" for n in names],
            "images": int(units["count"])}


def _empty_results(C: int, p, n_classes: int) -> dict:
    """Results of C channels with nothing in them (for runs that only add directions)."""
    k = p.top_k
    return {"count": 0, "act_max": np.full(C, np.nan), "act_mean": np.full(C, np.nan), "act_std": np.full(C, np.nan),
            "sparsity": np.full(C, np.nan), "dead": np.ones(C, dtype=bool), "weak": np.zeros(C, dtype=bool),
            "curve": np.zeros((C, p.curve_len), np.float32), "auc": np.full(C, np.nan),
            "class_means": np.full((n_classes, C), np.nan), "class_means_spatial": None,
            "class_count": np.zeros(n_classes, dtype=np.int64),
            "top_values": np.full((C, k), -np.inf), "top_ids": np.full((C, k), -1, dtype=np.int64),
            "top_y": np.full((C, k), -1, dtype=np.int64), "top_x": np.full((C, k), -1, dtype=np.int64),
            "probe": None, "probe_ids": np.zeros(0, dtype=np.int64),
            "bottom_values": np.full((C, 0), np.nan), "bottom_ids": np.full((C, 0), -1, dtype=np.int64),
            "kind": ["channel"] * C, "unit": [str(c) for c in range(C)]}
