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
from dataclasses import dataclass, field, replace

import numpy as np

from neuronindex.errors import UsageError
from neuronindex.names import valid_name as checked_name
from neuronindex.nets.receptive import Field
from neuronindex.science.dictionaries import Dictionary, DictionarySpec
from neuronindex.science.stats import Covariance

KINDS = ("svd", "random", "user", "nmf", "sae")
COMPUTED = ("svd", "random", "nmf", "sae")
RANDOM_POOL = 1000


# ---------------------------------------------------------------------------- statistics


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
    dictionary: DictionarySpec = field(default_factory=DictionarySpec)

    @classmethod
    def parse(cls, kinds: str | None, **kw) -> "DirectionSpec":
        names = [k.strip() for k in (kinds or "").split(",") if k.strip() and k.strip() != "none"]
        bad = [k for k in names if k not in COMPUTED]
        if bad:
            raise UsageError(f"unknown direction kind {bad[0]!r}; --directions takes svd, random, nmf, sae "
                             "(several joined by commas) or none")
        names = tuple(dict.fromkeys(names))
        dictionary = kw.pop("dictionary", None) or DictionarySpec()
        dictionary = replace(dictionary, kinds=tuple(k for k in names if k in ("nmf", "sae")))
        spec = cls(names, dictionary=dictionary, **kw)
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
        self.dictionary.validate()


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
    bias: np.ndarray | None = None  # (D,) added to the offsets (dictionary atoms' affine maps), or None
    fits: list = field(default_factory=list)  # the layer's fitted dictionaries (dictionaries.Dictionary)

    @property
    def weights(self) -> np.ndarray:
        """(D, C) w = u / sigma: the map is w . (a - mu)."""
        inv = np.where(self.std > 0, 1.0 / np.where(self.std > 0, self.std, 1.0), 0.0)
        return self.basis * inv[None, :]

    @property
    def offsets(self) -> np.ndarray:
        off = -(self.weights @ self.mean)
        return off if self.bias is None else off + self.bias

    def __len__(self) -> int:
        return len(self.names)

    def rows(self) -> list[dict]:
        weights, offsets = self.weights, self.offsets
        out = []
        for j in range(len(self)):
            var = float(self.variance[j])
            linear = self.kinds[j] in ("svd", "random", "user")  # a share and a singular value mean something
            out.append({"name": self.names[j], "kind": self.kinds[j], "ordinal": self.ordinals[j],
                        "filter": self.filters[j], "pooling": self.pooling, "variance": var,
                        "explained": var / self.trace if self.trace > 0 and linear else None,
                        "singular_value": float(np.sqrt(max(var, 0.0) * self.n)) if linear else None,
                        "n_images": self.n,
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


def with_atoms(d: LayerDirections | None, fits: list[Dictionary], mean: np.ndarray, std: np.ndarray,
               corr: np.ndarray | None, n: int, pooling: str = "max") -> LayerDirections | None:
    """A layer's directions with the atoms of its fitted dictionaries appended (kinds nmf / sae,
    named nmf1.. / sae1..). An atom's map W . a + b is kept as u = W * sigma (the standardised
    vector) and a bias b + W . mu, so `weights` and `offsets` give W and b back."""
    if not fits:
        return d
    C = len(mean)
    if d is None:
        d = LayerDirections([], [], np.zeros((0, C)), mean, std, n, pooling, np.zeros(0),
                            float(np.trace(corr)) if corr is not None else float((std > 0).sum()))
    names, kinds, filters, ordinals = list(d.names), list(d.kinds), list(d.filters), list(d.ordinals)
    basis = [d.basis]
    bias = [d.bias if d.bias is not None else np.zeros(len(d))]
    for f in fits:
        basis.append(f.weights * std[None, :])
        bias.append(f.offsets + f.weights @ mean)
        for j in range(len(f)):
            names.append(f"{f.kind}{j + 1}")
            kinds.append(f.kind)
            filters.append(None)
            ordinals.append(j + 1)
    basis = np.concatenate(basis)
    variance = np.einsum("kc,cd,kd->k", basis, corr, basis) if corr is not None else np.zeros(len(basis))
    return replace(d, names=names, kinds=kinds, basis=basis, variance=variance, filters=filters, ordinals=ordinals,
                   bias=np.concatenate(bias), fits=list(d.fits) + list(fits))


def valid_name(name: str) -> str:
    """A user direction's name: a name as models and layers have (names.valid_name) that starts
    with a letter (a digit would read as a channel) and is not a computed direction's."""
    name = checked_name(name, "direction name")
    if not name[0].isalpha():
        raise UsageError(f"direction name {name!r} must start with a letter")
    if re.fullmatch(r"(svd|random|nmf|sae)\d+", name):
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

    def project(self, node: str, a, signs: tuple = (1,)):
        """The direction maps (B, D, H, W) of a layer's map a; signs (1, -1): the maps and their
        negations side by side (B, 2D, H, W), in one 1x1 convolution (a copy of the map less
        than an einsum, and no concatenation after)."""
        import torch
        import torch.nn.functional as F

        w, b = self.by_node[node]
        w, b = w.to(a.device, a.dtype), b.to(a.device, a.dtype)
        if signs != (1,):
            w, b = torch.cat([s * w for s in signs]), torch.cat([s * b for s in signs])
        return F.conv2d(a, w[:, :, None, None], b)

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
    if f is None or d == 0:
        return f
    u = f.union_all()
    return Field(np.concatenate([f.start, u.start[:1].repeat(d, 0)]), np.concatenate([f.end, u.end[:1].repeat(d, 0)]),
                 f.stride.copy())


def extended_selections(selections, directions):
    """Selections whose layers hold C + D units (channels, then directions) for pass 2 and the indexes."""
    out = []
    for sel, d in zip(selections, directions):
        n = len(d) if d is not None else 0
        out.append(sel if n == 0 else replace(sel, layer=replace(sel.layer, channels=sel.layer.channels + n,
                                                                  field=extended_field(sel.layer.field, n))))
    return out


# ---------------------------------------------------------------------------- the units pass


# ---------------------------------------------------------------------------- user directions


