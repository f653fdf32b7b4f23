"""Learned dictionaries of a layer: NMF atoms (CRAFT, Fel et al., CVPR 2023) and sparse-autoencoder
atoms, fitted on the layer's activation vectors at sampled positions and indexed as units.

  sample     per image, the `positions` map positions with the smallest hash h(image, position)
             (all positions of smaller maps); of all those pairs, the `samples` with the smallest
             hash are kept (a bottom-k sketch: a uniform sample without replacement, the same
             whatever the batch order, exactly mergeable across shards and resumes, memory
             `samples` x channels floats per layer). Taken in pass 1 by the taps, from the map as
             the index stores it (after the tapped ReLU).
  nmf        scikit-learn's NMF (coordinate descent in float32, NNDSVDa start, `random_state` = seed) of the
             sample's non-negative part max(a, 0) (a layer read before its ReLU has negative
             values; the share of clipped mass is stored). Atoms are scaled to unit length.
  sae        a sparse autoencoder in torch: z = relu(W_e (x - b_d) + b_e), x^ = W_d' z + b_d, rows
             of W_d kept at unit length, loss = mean |x^ - x|^2 + l1 * mean sum z, on the sample
             scaled so that its centred vectors have mean squared length 1; Adam, `sae_steps`
             steps of 256 vectors, atoms started at sampled centred vectors and b_d at 0 (started at the mean, an
             atom can settle on minus a rare part, "this part is absent", and never leave). L1 rather than top-k: with
             it an atom's code at every position is the rectified pre-activation of that atom
             alone, so the atom's map below is exact.

An atom is a unit whose map is affine in the layer's map a (the seam every direction uses):

  nmf        h = pinv(W) a: the least-squares code on the atoms. It equals NMF's non-negative
             code wherever a lies in the atoms' cone, and is what any affine map can do beside
             it; `r2_map` (codes max(h, 0)) against `r2` (NMF's own codes) says how close.
  sae        the encoder's pre-activation W_e (a / scale - b_d) + b_e; the code is its positive
             part, so top images, locations and values above 0 are the code's exactly.

Per layer and kind the fit stores R^2 = 1 - |X - X^|^2 / |X - mean X|^2 over the sample, the mean
number of active atoms (L0) and the loss curve (SAE); beside them, for the same number of units,
the R^2 of K neurons (the K of largest variance, every channel regressed on them by least squares)
and of K principal components (the most any K linear units can explain).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from neuronindex.errors import UsageError

KINDS = ("nmf", "sae")
SAE_BATCH = 256


@dataclass
class DictionarySpec:
    """What dictionaries an ingest (or `directions learn`) fits."""
    kinds: tuple[str, ...] = ()
    atoms: int = 16
    samples: int = 16384
    positions: int = 16
    sae_steps: int = 300
    sae_l1: float = 0.05
    seed: int = 0

    def validate(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise UsageError(f"unknown dictionary kind {bad[0]!r}; use nmf or sae")
        if self.atoms < 1:
            raise UsageError("--atoms must be at least 1")
        if self.samples < 16:
            raise UsageError("--dict-samples must be at least 16")
        if self.positions < 1:
            raise UsageError("--dict-positions must be at least 1")
        if self.sae_steps < 1:
            raise UsageError("--sae-steps must be at least 1")
        if self.sae_l1 < 0:
            raise UsageError("--sae-l1 must be 0 or more")

    def atoms_for(self, channels: int) -> int:
        """K for a layer of C channels: `atoms`, at most half the channels (at least 1)."""
        return max(1, min(self.atoms, channels // 2))


# ---------------------------------------------------------------------------- the sample

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def position_keys(image_ids: np.ndarray, n_positions: int) -> np.ndarray:
    """(B, P) keys in [0, 1) of every (image, flat position): h(image << 32 | position)."""
    ids = np.asarray(image_ids, dtype=np.uint64)[:, None] << np.uint64(32)
    h = _mix(ids | np.arange(n_positions, dtype=np.uint64)[None, :])
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class PositionSample:
    """Per layer, the `capacity` (image, position) vectors of smallest key (see the module doc)."""

    def __init__(self, channels: list[int], capacity: int, per_image: int):
        self.channels, self.capacity, self.per_image = list(channels), int(capacity), int(per_image)
        self.keys = [np.zeros(0) for _ in self.channels]
        self.images = [np.zeros(0, np.int64) for _ in self.channels]
        self.where = [np.zeros(0, np.int64) for _ in self.channels]
        self.vectors = [np.zeros((0, c), np.float32) for c in self.channels]
        self.bar = [np.inf for _ in self.channels]
        self._pending = [[] for _ in self.channels]

    def take(self, i: int, acts, image_ids: np.ndarray) -> None:
        """Offer layer i's map (B, C, H, W) of the images `image_ids` (B,)."""
        import torch

        B, C, H, W = acts.shape
        if C != self.channels[i]:
            raise ValueError(f"layer {i} has {C} channels where {self.channels[i]} were expected")
        keys = position_keys(image_ids, H * W)
        if self.per_image < H * W:
            cols = np.argpartition(keys, self.per_image - 1, axis=1)[:, : self.per_image]
        else:
            cols = np.broadcast_to(np.arange(H * W), (B, H * W))
        rows = np.broadcast_to(np.arange(B)[:, None], cols.shape)
        k = keys[rows, cols]
        keep = k < self.bar[i]
        if not keep.any():
            return
        b, p = rows[keep], cols[keep]
        # the points alone, in any memory layout (a flatten of a channels-last map would copy it whole)
        at = [torch.from_numpy(v).to(acts.device) for v in (b, p // W, p % W)]
        vec = acts[at[0], :, at[1], at[2]]
        self._pending[i].append((k[keep], np.asarray(image_ids, np.int64)[b], p.astype(np.int64),
                                 vec.float().cpu().numpy()))
        if sum(len(x[0]) for x in self._pending[i]) > self.capacity:
            self._compact(i)

    def _compact(self, i: int) -> None:
        parts = self._pending[i]
        if not parts:
            return
        keys = np.concatenate([self.keys[i]] + [x[0] for x in parts])
        images = np.concatenate([self.images[i]] + [x[1] for x in parts])
        where = np.concatenate([self.where[i]] + [x[2] for x in parts])
        vectors = np.concatenate([self.vectors[i]] + [x[3] for x in parts])
        self._pending[i] = []
        order = np.lexsort((where, images, keys))[: self.capacity]
        self.keys[i], self.images[i], self.where[i] = keys[order], images[order], where[order]
        self.vectors[i] = np.ascontiguousarray(vectors[order])
        if len(order) >= self.capacity:
            self.bar[i] = float(self.keys[i][-1])

    def layer(self, i: int) -> np.ndarray:
        """The sampled vectors (n, C) of layer i, in key order."""
        self._compact(i)
        return self.vectors[i]

    def merge(self, other: "PositionSample") -> None:
        if (other.channels, other.capacity, other.per_image) != (self.channels, self.capacity, self.per_image):
            raise ValueError("the states hold position samples of different layers or sizes")
        for i in range(len(self.channels)):
            other._compact(i)
            self._pending[i].append((other.keys[i], other.images[i], other.where[i], other.vectors[i]))
            self._compact(i)

    def state_dict(self) -> dict:
        state = {"meta": np.array([self.capacity, self.per_image, *self.channels], dtype=np.int64)}
        for i in range(len(self.channels)):
            self._compact(i)
            state.update({f"keys_{i}": self.keys[i], f"images_{i}": self.images[i], f"where_{i}": self.where[i],
                          f"vectors_{i}": self.vectors[i]})
        return state

    @classmethod
    def from_state(cls, state: dict) -> "PositionSample":
        meta = [int(v) for v in state["meta"]]
        s = cls(meta[2:], meta[0], meta[1])
        for i in range(len(s.channels)):
            s._pending[i].append((np.asarray(state[f"keys_{i}"], np.float64), np.asarray(state[f"images_{i}"], np.int64),
                                  np.asarray(state[f"where_{i}"], np.int64),
                                  np.asarray(state[f"vectors_{i}"], np.float32)))
            s._compact(i)
        return s


# ---------------------------------------------------------------------------- fits

@dataclass
class Dictionary:
    """One fitted dictionary of one layer: K atoms as affine maps over the layer's channels."""
    kind: str
    atoms: np.ndarray  # (K, C) the atoms (decoder rows), unit length
    weights: np.ndarray  # (K, C) the code map's weights over the raw channels
    offsets: np.ndarray  # (K,)
    r2: float  # reconstruction R^2 with the method's own codes
    r2_map: float  # ... with the codes the stored maps give (max(map, 0))
    l0: float  # mean number of atoms with a code > 0
    samples: int
    seconds: float
    clipped: float = 0.0  # share of the sample's absolute mass below zero (NMF fits max(a, 0))
    loss: list = field(default_factory=list)  # SAE: training loss every 50 steps
    baselines: dict = field(default_factory=dict)  # R^2 of as many neurons / principal components (`baselines`)

    def __len__(self) -> int:
        return len(self.atoms)

    def codes(self, x: np.ndarray) -> np.ndarray:
        """The codes max(map, 0) of vectors x (n, C)."""
        return np.maximum(x @ self.weights.T + self.offsets, 0.0)


def r2_score(x: np.ndarray, recon: np.ndarray) -> float:
    """1 - |x - recon|^2 / |x - mean x|^2 over all entries (1: exact; 0: no better than the mean)."""
    x = np.asarray(x, np.float64)
    total = float(((x - x.mean(0)) ** 2).sum())
    return 1.0 - float(((x - recon) ** 2).sum()) / total if total > 0 else 0.0


def fit_nmf(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 200, tol: float = 1e-4, dtype=np.float32) -> Dictionary:
    """NMF of max(x, 0) (n, C) into k unit-length atoms (scikit-learn; see the module doc)."""
    import warnings

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    t0 = time.time()
    x = np.asarray(x, np.float64)
    pos = np.maximum(x, 0.0)
    mass = float(np.abs(x).sum())
    clipped = float((pos - x).sum()) / mass if mass > 0 else 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        model = NMF(n_components=k, init="nndsvda", solver="cd", max_iter=max_iter, tol=tol, random_state=seed)
        codes = model.fit_transform(pos.astype(dtype)).astype(np.float64)
    atoms = model.components_.astype(np.float64)
    norms = np.linalg.norm(atoms, axis=1)
    live = norms > 0
    atoms = np.where(live[:, None], atoms / np.where(live, norms, 1.0)[:, None], 0.0)
    codes = codes * norms[None, :]
    weights = np.linalg.pinv(atoms).T  # (K, C): h = pinv(W) a, W = atoms' (C, K)
    d = Dictionary("nmf", atoms, weights, np.zeros(k), r2_score(x, codes @ atoms), 0.0,
                   float((codes > 1e-12).sum(1).mean()), len(x), 0.0, clipped)
    d.r2_map = r2_score(x, d.codes(x) @ atoms)
    d.seconds = time.time() - t0
    return d


def fit_sae(x: np.ndarray, k: int, steps: int = 300, l1: float = 0.05, seed: int = 0, lr: float = 5e-3,
            batch: int = SAE_BATCH) -> Dictionary:
    """A ReLU sparse autoencoder with an L1 penalty, k atoms (torch; see the module doc)."""
    import torch

    t0 = time.time()
    x = np.asarray(x, np.float64)
    n, C = x.shape
    mean = x.mean(0)
    scale = float(np.sqrt(((x - mean) ** 2).sum(1).mean())) or 1.0
    g = torch.Generator().manual_seed(seed)
    data = torch.from_numpy((x / scale).astype(np.float32))
    start = data[torch.randperm(n, generator=g)[:k]] - torch.from_numpy((mean / scale).astype(np.float32))
    if len(start) < k:  # fewer samples than atoms: random directions for the rest
        start = torch.cat([start, torch.randn(k - len(start), C, generator=g)])
    start = start + 1e-3 * torch.randn(k, C, generator=g)
    dec = torch.nn.Parameter(start / start.norm(dim=1, keepdim=True).clamp_min(1e-12))
    enc = torch.nn.Parameter(dec.detach().clone())
    b_enc = torch.nn.Parameter(torch.zeros(k))
    b_dec = torch.nn.Parameter(torch.zeros(C))  # from the origin: a ReLU layer's zero vector is "nothing here"
    opt = torch.optim.Adam([dec, enc, b_enc, b_dec], lr=lr)
    loss_curve = []
    running = 0.0
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=g)
        xb = data[idx]
        z = torch.relu((xb - b_dec) @ enc.T + b_enc)
        recon = z @ dec + b_dec
        loss = ((recon - xb) ** 2).sum(1).mean() + l1 * z.sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            dec /= dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        running += loss.detach().item()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            loss_curve.append(running / (50 if (step + 1) % 50 == 0 else (step + 1) % 50))
            running = 0.0
    with torch.no_grad():
        W_e, b_e, W_d, b_d = (t.detach().double().numpy() for t in (enc, b_enc, dec, b_dec))
    weights = W_e / scale
    offsets = b_e - W_e @ b_d
    d = Dictionary("sae", W_d, weights, offsets, 0.0, 0.0, 0.0, n, 0.0, 0.0, loss_curve)
    codes = d.codes(x)
    d.r2 = d.r2_map = r2_score(x, (codes @ W_d + b_d) * scale)
    d.l0 = float((codes > 0).sum(1).mean())
    d.seconds = time.time() - t0
    return d


def baselines(x: np.ndarray, k: int) -> dict:
    """R^2 of k units of the layer itself over the sample: k neurons (largest variance; every
    channel regressed on them) and k principal components."""
    x = np.asarray(x, np.float64)
    xc = x - x.mean(0)
    total = float((xc ** 2).sum())
    if total <= 0:
        return {"channel": 0.0, "pca": 0.0}
    var = (xc ** 2).sum(0)
    pick = np.argsort(-var, kind="stable")[:k]
    coef, *_ = np.linalg.lstsq(xc[:, pick], xc, rcond=None)
    r2_channels = 1.0 - float(((xc - xc[:, pick] @ coef) ** 2).sum()) / total
    evals = np.sort(np.linalg.eigvalsh(xc.T @ xc))[::-1]
    r2_pca = float(np.maximum(evals[:k], 0).sum()) / total
    return {"channel": r2_channels, "pca": min(r2_pca, 1.0)}


def fit(x: np.ndarray, spec: DictionarySpec, channels: int) -> list[Dictionary]:
    """The spec's dictionaries of one layer's sample (n, C), in the order of spec.kinds."""
    k = spec.atoms_for(channels)
    if len(x) < 2:
        raise UsageError("too few sampled positions to fit a dictionary; index more images")
    out = []
    for kind in spec.kinds:
        if kind == "nmf":
            out.append(fit_nmf(x, k, spec.seed))
        else:
            out.append(fit_sae(x, k, spec.sae_steps, spec.sae_l1, spec.seed))
    base = baselines(x, k) if out else {}
    for d in out:
        d.baselines = base
    return out
