"""Activation maximisation (Dai 2020, section 2, and Øygard 2016): the image a unit, a class or a layer
responds to most, found by gradient ascent on the input with the weights fixed.

Objectives (Dai 2020 eq. 1), each a term  weight * value:
  unit      a unit's value at the centre of its map, so the image covers that unit's receptive
            field (the default for neurons: it is what the NF and the crops show, and its input
            is only the field's window, see `features.crop_geometry`)
  channel   the mean of the unit's whole map (a full-size input)
  layer     the mean of a layer's whole map, all channels
  class     a class logit (pre-softmax), or `prob`: its softmax probability
and sums of these with weights. Directions (Zhang (CS231n)) are units like channels: their map is the
projection w . a + offset, so every unit is a weight vector over its layer's channels.

Images are made natural by (Olah et al. 2017, "Feature Visualization"; Dai 2020, Øygard 2016):
  fourier   the default parameterisation: the image is the inverse FFT of a spectrum whose
            coefficients are scaled by 1/f^decay (so the optimiser moves low frequencies as
            easily as high ones), in decorrelated colour: the three planes are mixed by the square
            root of the RGB covariance of the index's own images (so a step moves natural
            colours, not independent channels), then a sigmoid maps them into [0, 1]
  pixel     the plain RGB pixels (through a sigmoid), with Dai 2020's regularisers: L2 decay of
            the image around mid-grey (Dai 2020's mean-subtracted image, `l2`), total variation (`tv`, squared differences of
            neighbours), and a Gaussian blur of the image every `blur_every` steps (Øygard 2016)
  robustness  before every forward each image is randomly translated (`jitter` px), scaled
            (1 +- `scale`) and rotated (+- `rotate` degrees) by one affine resampling (reflected
            at the border), with both parameterisations
The objective of a neuron is divided by its a_max over the dataset, so the regulariser weights
mean the same on every layer. Adam, `lr`, `steps`. One forward and backward per step runs every
image of a batch (different neurons of one layer), through the network truncated after that layer.

Stored per target: the image (PNG), the objective every 32nd step (`trace`), the final value on
the stored 8-bit image without transformations, and for neurons the activation on that image
(unit: the centre unit; channel: the map's spatial maximum, a neuron's activation in the
index) relative to the neuron's a_max over the dataset: `activation_ratio` >= 1 means the
optimised image drives the neuron at least as hard as its best dataset image.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from neuronindex.errors import NotFoundError, UsageError, did_you_mean
from neuronindex.settings import default

TRACE_EVERY = 32
MAX_UNNAMED_CLASSES = 32  # --classes dataset takes every output of a model this small when no class matches
METHOD_VERSION = 2  # part of the parameters hash: raise it when a change of the code changes the images
OBJECTIVES = ("unit", "channel")
PARAMETERIZATIONS = ("fourier", "pixel", "raw")


@dataclass
class VizParams:
    """Every option of an optimisation, with its default (also in `neuronindex visualize --help`)."""

    objective: str = "unit"
    steps: int = default("viz_steps")
    lr: float = default("viz_lr")
    parameterization: str = "fourier"
    decorrelate: bool = True
    decay: float = 1.0
    jitter: float | None = None  # px; None: 8 px per 224 px of the optimised image (a unit's window is small)
    scale: float = default("viz_scale")
    rotate: float = default("viz_rotate")
    l2: float | None = None  # None: 0 for fourier, 0.5 for pixel
    tv: float | None = None  # None: 0 for fourier, 2.0 for pixel
    blur_every: int | None = None  # None: never for fourier, 4 for pixel
    blur_sigma: float = 0.5
    init_sd: float = 0.01
    seed: int = 0
    batch_size: int = default("viz_batch_size")

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UsageError(f"unknown objective {self.objective!r}; use {' or '.join(OBJECTIVES)}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise UsageError(f"unknown parameterisation {self.parameterization!r}; use fourier, pixel or raw")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 100_000:
            raise UsageError(f"--steps must be a whole number from 1 to 100000, not {self.steps!r}")
        if not self.batch_size or self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {self.batch_size!r}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, not {self.lr!r}")
        if self.blur_every is not None and self.blur_every < 0:
            raise UsageError(f"--blur-every must be 0 (never) or more, not {self.blur_every!r}")
        for name in ("jitter", "scale", "rotate", "l2", "tv", "blur_sigma", "init_sd", "decay"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a number >= 0, not {v!r}")

    def resolved(self, input_size) -> "VizParams":
        """The options with the per-parameterisation defaults filled in."""
        pixel = self.parameterization == "pixel"
        r = VizParams(**asdict(self))
        r.l2 = (0.5 if pixel else 0.0) if r.l2 is None else r.l2
        r.tv = (2.0 if pixel else 0.0) if r.tv is None else r.tv
        r.blur_every = (4 if pixel else 0) if r.blur_every is None else r.blur_every
        return r

    def key(self) -> dict:
        """What decides the result (the batch size does not: each image is optimised on its own,
        with its own seed), and the method's version (a change of the method redoes stored images)."""
        return {**{k: v for k, v in asdict(self).items() if k != "batch_size"}, "method": METHOD_VERSION}


def start_params(params: VizParams) -> VizParams:
    """The options of a run from a real image (Dai 2020 section 2.1): the raw pixels (clipped to
    [0, 1]), small steps, no transformations and no regularisers, so the difference image is the
    accumulated gradient."""
    return VizParams(**{**asdict(params), "parameterization": "raw", "jitter": 0.0, "scale": 0.0, "rotate": 0.0,
                        "l2": 0.0, "tv": 0.0, "blur_every": 0, "lr": min(params.lr, 0.01)})


def flip_step(predicted: np.ndarray, target: int) -> int | None:
    """The first step whose image the model assigns to `target` (predicted: one class per step,
    then the final image's), or None."""
    hits = np.flatnonzero(np.asarray(predicted) == target)
    return int(hits[0]) if len(hits) else None


def params_hash(params: VizParams, color) -> str:
    text = json.dumps({**params.key(), "color": np.round(np.asarray(color), 6).tolist()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ colour decorrelation

def color_sqrt(pixels: np.ndarray | None) -> np.ndarray:
    """The square root of the RGB covariance of `pixels` (n, 3) in [0, 1], scaled so its largest
    column has unit length: the colour mixing of the decorrelated parameterisation. None or too
    few pixels: the identity (no decorrelation)."""
    if pixels is None or len(pixels) < 16:
        return np.eye(3)
    cov = np.cov(np.asarray(pixels, dtype=np.float64).T)
    vals, vecs = np.linalg.eigh(cov)
    root = vecs @ np.diag(np.sqrt(np.clip(vals, 1e-8, None))) @ vecs.T
    return root / np.linalg.norm(root, axis=0).max()


def dataset_color(images: list, limit: int = 64) -> np.ndarray:
    """color_sqrt of up to `limit` images (PIL RGB, as the model sees them), 4,096 pixels each."""
    rng = np.random.default_rng(0)
    samples = []
    for im in images[:limit]:
        a = np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0
        samples.append(a[rng.choice(len(a), min(len(a), 4096), replace=False)])
    return color_sqrt(np.concatenate(samples) if samples else None)


# ------------------------------------------------------------------ image parameterisations

class _Image:
    """B images of (h, w) as parameters; `rgb()` -> (B, 3, h, w) in [0, 1] with autograd."""

    def parameters(self) -> list:
        return [self.p]

    def clip(self) -> None:
        """After each step (only the raw pixels need it)."""

    def to(self, device) -> "_Image":
        """Parameters (and constants) on `device`, so the whole step runs there."""
        for name in ("scale", "color"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).to(device))
        self.p = self.p.detach().to(device).requires_grad_()
        return self


def _noise(shape, gens, sd):
    """One seeded draw per image (each image's own generator: its result does not depend on the batch)."""
    import torch

    return torch.stack([torch.randn(*shape, generator=g) for g in gens]) * sd


class FourierImage(_Image):
    def __init__(self, b, h, w, color, decay, sd, gens, start=None):
        import torch

        self.h, self.w = h, w
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = torch.sqrt(fx * fx + fy * fy).clamp(min=1.0 / max(h, w))
        self.scale = (1.0 / freq ** decay).float()
        self.color = torch.as_tensor(color, dtype=torch.float32)
        if start is None:
            self.p = _noise((3, h, w // 2 + 1, 2), gens, sd).requires_grad_()
        else:  # the spectrum whose image is `start` (B, 3, h, w) in [0, 1]
            logit = torch.logit(start.clamp(1e-3, 1 - 1e-3))
            flat = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.color), logit)
            spec = torch.fft.rfft2(flat * 4, norm="ortho") / self.scale
            self.p = torch.view_as_real(spec).contiguous().requires_grad_()

    def rgb(self):
        import torch

        spec = torch.view_as_complex(self.p) * self.scale
        x = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho") / 4
        return torch.sigmoid(torch.einsum("ij,bjhw->bihw", self.color, x))


class PixelImage(_Image):
    def __init__(self, b, h, w, sd, gens, start=None):
        import torch

        if start is None:
            self.p = _noise((3, h, w), gens, sd).requires_grad_()
        else:
            self.p = torch.logit(start.clamp(1e-3, 1 - 1e-3)).clone().requires_grad_()

    def rgb(self):
        import torch

        return torch.sigmoid(self.p)

    def blur(self, sigma: float) -> None:
        import torch
        from torchvision.transforms.functional import gaussian_blur

        k = max(3, 2 * math.ceil(3 * sigma) + 1)
        with torch.no_grad():
            self.p.copy_(gaussian_blur(self.p, [k, k], [sigma, sigma]))


class RawImage(PixelImage):
    """The pixels themselves in [0, 1], clipped after every step (projected gradient ascent, as
    Dai 2020 steps a real image): no sigmoid, whose gradient all but vanishes at the saturated
    pixels a real picture has."""

    def __init__(self, b, h, w, sd, gens, start=None):
        if start is None:
            self.p = (_noise((3, h, w), gens, sd) + 0.5).clamp(0, 1).requires_grad_()
        else:
            self.p = start.clone().requires_grad_()

    def rgb(self):
        return self.p

    def clip(self) -> None:
        import torch

        with torch.no_grad():
            self.p.clamp_(0, 1)


def random_affine(x, gens, jitter: float, scale: float, rotate: float):
    """Each image of x (B, 3, h, w) translated by up to `jitter` px, scaled by 1 +- `scale` and
    rotated by up to `rotate` degrees (independent draws per image), one bilinear resampling
    reflected at the border; the size stays, so a unit keeps its place in the map."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    if not (jitter or scale or rotate):
        return x
    u = torch.stack([torch.rand(4, generator=g) for g in gens]) * 2 - 1
    s = 1 + u[:, 0] * scale
    a = torch.deg2rad(u[:, 1] * rotate)
    tx, ty = u[:, 2] * jitter * 2 / w, u[:, 3] * jitter * 2 / h
    theta = torch.stack([torch.stack([a.cos() / s, -a.sin() / s, tx], 1),
                         torch.stack([a.sin() / s, a.cos() / s, ty], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def total_variation(x):
    """Per image: mean squared difference of vertical and horizontal neighbours (B,)."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dy + dx


# ------------------------------------------------------------------ objectives

@dataclass
class UnitObjective:
    """B units of one layer, each a weight vector over its channels (a channel: one-hot; a
    direction: its weights) plus an offset: value = unit at `at` (unit) or the map's mean
    (channel); activation = unit at `at` (unit) or the map's spatial maximum (channel).

    A channel of a rectified layer is optimised on its pre-activation (the node before the ReLU,
    `rectify`): the optimum is the same, and the gradient does not vanish where the unit starts
    below zero (a grey start leaves many first-layer units there)."""

    node: str
    weights: object  # (B, C) tensor
    offsets: object  # (B,)
    kind: str
    at: tuple[int, int] | None
    norm: object  # (B,) divide the value by this in the loss (a_max)
    rectify: bool = False  # node is the pre-activation of a ReLU layer: activation = relu(value)

    @property
    def nodes(self) -> list[str]:
        return [self.node]

    def maps(self, out):
        import torch

        a = out[self.node]
        w, off = self.weights.to(a.device, a.dtype), self.offsets.to(a.device, a.dtype)
        return torch.einsum("bchw,bc->bhw", a, w) + off.view(-1, 1, 1)

    def value(self, out):
        m = self.maps(out)
        if self.kind == "unit":
            return m[:, self.at[0], self.at[1]]
        return m.flatten(1).mean(1)

    def activation(self, out):
        m = self.maps(out)
        a = m[:, self.at[0], self.at[1]] if self.kind == "unit" else m.flatten(1).amax(1)
        return a.clamp(min=0) if self.rectify else a


@dataclass
class Term:
    """One term of a sum: weight * (kind, what), kind in unit, channel, layer, class, prob."""

    weight: float
    kind: str
    node: str | None = None
    vector: np.ndarray | None = None  # over the node's channels (unit, channel)
    offset: float = 0.0
    at: tuple[int, int] | None = None
    output: int | None = None  # class, prob
    text: str = ""


@dataclass
class SumObjective:
    """Sums of weighted terms, one sum per image of the batch (Dai 2020: composite objectives)."""

    sums: list[list[Term]]
    output_node: str | None = None
    norm: object = None

    @property
    def nodes(self) -> list[str]:
        nodes = [t.node for s in self.sums for t in s if t.node is not None]
        if any(t.kind in ("class", "prob") for s in self.sums for t in s):
            nodes.append(self.output_node)
        return list(dict.fromkeys(nodes))

    def value(self, out):
        import torch

        values = []
        for b, terms in enumerate(self.sums):
            v = 0.0
            for t in terms:
                v = v + t.weight * _term(t, out, b, self.output_node)
            values.append(v if torch.is_tensor(v) else torch.tensor(float(v), device=self._device(out)))
        return torch.stack(values)

    activation = value

    @staticmethod
    def _device(out):
        return next(iter(out.values())).device


def _term(t: Term, out, b: int, output_node):
    import torch

    if t.kind in ("class", "prob"):
        logits = out[output_node][b].flatten()
        return logits[t.output] if t.kind == "class" else torch.softmax(logits, 0)[t.output]
    a = out[t.node][b]
    if t.kind == "layer":
        return a.mean()
    m = torch.einsum("chw,c->hw", a, torch.as_tensor(t.vector, dtype=a.dtype, device=a.device)) + t.offset
    return m[t.at] if t.kind == "unit" else m.mean()


# ------------------------------------------------------------------ the optimisation

@dataclass
class Optimised:
    images: np.ndarray  # (B, h, w, 3) uint8
    trace: np.ndarray  # (B, n) objective at steps 0, 32, ... and the last
    trace_steps: list[int]
    value: np.ndarray  # (B,) objective on the stored images, untransformed
    activation: np.ndarray  # (B,)
    predicted: np.ndarray | None = None  # (steps + 1, B) class argmax per step (with an output node)
    seconds: float = 0.0
    probabilities: np.ndarray | None = None  # (B, classes) softmax on the stored images (with an output node)


def image_seed(seed: int, target: str) -> int:
    """The seed of one target's image: its noise and transformations depend on the run's seed and
    the target only, not on the batch it was optimised in."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{target}".encode()).digest()[:4], "little")


def optimise(forward, objective, b: int, size, params: VizParams, color, start=None, device="cpu",
             output_node: str | None = None, seeds: list[int] | None = None) -> Optimised:
    """Optimise b images of `size` (h, w) for `objective` (see UnitObjective, SumObjective).

    forward(x01 (B, 3, h, w) float in [0, 1]) -> {node: map} with autograd; params resolved;
    start: None (noise) or (B, 3, h, w) in [0, 1]; seeds: one per image (default: params.seed + i),
    for its noise and its transformations. Deterministic for given seeds."""
    import torch

    t0 = time.perf_counter()
    seeds = seeds if seeds is not None else [int(params.seed) + i for i in range(b)]
    gen = [torch.Generator().manual_seed(int(s)) for s in seeds]
    h, w = size
    if start is not None:
        start = torch.as_tensor(start, dtype=torch.float32)
    if params.parameterization == "fourier":
        img = FourierImage(b, h, w, color if params.decorrelate else np.eye(3), params.decay, params.init_sd, gen, start)
    elif params.parameterization == "raw":
        img = RawImage(b, h, w, params.init_sd, gen, start)
    else:
        img = PixelImage(b, h, w, params.init_sd, gen, start)
    img.to(device)
    opt = torch.optim.Adam(img.parameters(), lr=params.lr)
    # translations relative to the image: 8 px of 224 for a whole input, less than a pixel for a
    # 7-px field (a fixed 8 px would move a small field's pattern off its unit at every step)
    jitter = params.jitter if params.jitter is not None else 8.0 * min(h, w) / 224
    mean = torch.full((1, 3, 1, 1), 0.5, device=device)
    norm = getattr(objective, "norm", None)
    norm = (torch.ones(b) if norm is None else torch.as_tensor(norm, dtype=torch.float32)).to(device)
    trace, steps_at, predicted = [], [], []
    for step in range(params.steps):
        opt.zero_grad(set_to_none=True)
        x = img.rgb()
        seen = random_affine(x, gen, jitter, params.scale, params.rotate)
        out = forward(seen)
        value = objective.value(out).float()
        if output_node is not None:
            predicted.append(out[output_node].detach().flatten(1).argmax(1).cpu().numpy())
        if step % TRACE_EVERY == 0:
            trace.append(value.detach().cpu().numpy().copy())
            steps_at.append(step)
        loss = -(value / norm)
        if params.l2:
            loss = loss + params.l2 * (x - mean).pow(2).flatten(1).mean(1)
        if params.tv:
            loss = loss + params.tv * total_variation(x)
        loss.sum().backward()
        opt.step()
        img.clip()
        if isinstance(img, PixelImage) and params.blur_every and (step + 1) % params.blur_every == 0:
            img.blur(params.blur_sigma)
    with torch.no_grad():
        u8 = (img.rgb() * 255).round().clamp(0, 255).to(torch.uint8)
        out = forward(u8.float() / 255)
        value = objective.value(out).float().cpu().numpy()
        act = objective.activation(out).float().cpu().numpy()
        probabilities = None
        if output_node is not None:
            logits = out[output_node].flatten(1)
            predicted.append(logits.argmax(1).cpu().numpy())
            probabilities = torch.softmax(logits.float(), 1).cpu().numpy()
    trace.append(value.copy())
    steps_at.append(params.steps)
    return Optimised(u8.permute(0, 2, 3, 1).cpu().numpy(), np.stack(trace, 1), steps_at, value, act,
                     np.stack(predicted) if predicted else None, time.perf_counter() - t0, probabilities)


def grad_forward(loaded, nodes: list[str], device: str = "cpu"):
    """x01 (B, 3, h, w) in [0, 1] -> {node: map} with autograd, through the network truncated after
    the deepest of `nodes` (see extract.Extractor.differentiable)."""
    from neuronindex.nets.extract import Extractor

    ex = Extractor(loaded, nodes, device)
    return lambda x: ex.differentiable(x)


def output_node(loaded) -> str:
    """The fx node of the model's output (the class logits)."""
    from torchvision.models.feature_extraction import get_graph_node_names

    return get_graph_node_names(loaded.module)[1][-1]


def output_names(loaded, n: int) -> list[str]:
    """Names of the model's n outputs: its own class names, torchvision's ImageNet categories for a
    1,000-way output, else `output K`."""
    names = list(loaded.class_names or ())
    if len(names) != n and n == 1000:
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        names = list(_IMAGENET_CATEGORIES)
    return names if len(names) == n else [f"output {k}" for k in range(n)]


def color_stats(image: np.ndarray, box=None) -> tuple:
    """(alpha, hue) of an image's field (x0, y0, x1, y1, clipped), by the NF's colour index with
    uniform weights (every pixel of one optimised image counts the same)."""
    from neuronindex.science.selectivity import color_selectivity

    if box is not None:
        x0, y0, x1, y1 = box
        image = image[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
    if image.size == 0:
        return None, None
    c = color_selectivity(image.astype(np.float32), np.ones(image.shape[:2], bool), np.ones(image.shape[:2], np.float32))
    return c.alpha, c.hue


def png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", compress_level=3)
    return buf.getvalue()


# ------------------------------------------------------------------ stored runs

@dataclass
class _Target:
    """One thing to optimise in a stored run."""

    target: str
    objective: str
    neuron_id: int | None = None
    channel: int | None = None
    vector: np.ndarray | None = None
    offset: float = 0.0
    act_max: float | None = None
    output: int | None = None


@dataclass
class _Model:
    id: int
    name: str
    loaded: object
    graph: object
    color: np.ndarray
    extractors: dict = field(default_factory=dict)
    n_outputs: int | None = None

    def forward(self, nodes: tuple, device: str):
        if nodes not in self.extractors:
            self.extractors[nodes] = grad_forward(self.loaded, list(nodes), device)
        return self.extractors[nodes]


def _open_model(idx, name: str, rows) -> _Model:
    from neuronindex.nets.layers import trace
    from neuronindex.nets.models import Preprocessing, load_model

    spec, weights, pre, model_id = rows
    loaded = load_model(spec, weights, Preprocessing.from_json(pre), name)
    images = []
    for r in idx.query("SELECT i.path, d.source FROM images i JOIN datasets d ON d.id = i.dataset_id JOIN ingests g "
                       "ON g.dataset_id = d.id WHERE g.model_id = ? ORDER BY i.id LIMIT 64", [model_id]).rows():
        try:
            images.append(loaded.preprocessing.geometric(idx.load_image(r["path"], r["source"])))
        except Exception:  # noqa: BLE001 - an image that moved: the colour matrix uses the others
            continue
    return _Model(model_id, name, loaded, trace(loaded), dataset_color(images))


def _models(idx, model: str | None) -> dict:
    rows = idx.query("SELECT id, name, spec, weights, preprocessing FROM models ORDER BY id").rows()
    if model is not None:
        names = [r["name"] for r in rows]
        if model not in names:
            raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, names)}")
        rows = [r for r in rows if r["name"] == model]
    return {r["name"]: (r["spec"], r["weights"], r["preprocessing"], r["id"]) for r in rows}


def _layer_targets(idx, model: str, layers: list[str] | None, objective: str) -> list[tuple]:
    """[(layer row, [targets])] of a model's stored layers (all, or those named), dead units left out."""
    from neuronindex.nets.layers import stored_names

    rows = idx.layers(model).rows()
    if layers:
        chosen = []
        for name in layers:
            found = [r for r in rows if name in stored_names(r)]
            if not found:
                from neuronindex.errors import LayerError

                raise LayerError(f"model {model} has no stored layer {name!r}"
                                 f"{did_you_mean(name, [r['name'] for r in rows])}; its layers: "
                                 f"{', '.join(r['name'] for r in rows)}")
            chosen += [r for r in found if r not in chosen]
        rows = sorted(chosen, key=lambda r: rows.index(r))
    out = []
    for r in rows:
        units = idx.query("SELECT n.id, n.key, n.channel, n.kind, n.act_max, n.dead, d.weights, d.\"offset\" "
                          "FROM neurons n LEFT JOIN directions d ON d.neuron_id = n.id WHERE n.layer_id = ? "
                          "ORDER BY n.channel", [r["id"]]).rows()
        targets = []
        for u in units:
            if u["dead"] or not (u["act_max"] or 0) > 0:
                continue
            vec = None if u["kind"] == "channel" else np.asarray(u["weights"], dtype=np.float64)
            targets.append(_Target(u["key"], objective, u["id"], int(u["channel"]), vec, float(u["offset"] or 0.0),
                                   float(u["act_max"])))
        out.append((r, targets))
    return out


def _class_targets(idx, m: _Model, classes, objective: str = "class") -> list[_Target]:
    """classes: 'dataset' (the index's classes that name an output), a number N (the first N of
    those), or names / output numbers."""
    n_out = _n_outputs(m)
    names = output_names(m.loaded, n_out)
    lower = {n.lower() for n in names}
    if classes == "dataset" or isinstance(classes, int):
        stored = [r["name"] for r in idx.query(
            "SELECT DISTINCT c.name, c.id FROM classes c JOIN ingests g ON g.dataset_id = c.dataset_id "
            "WHERE g.model_id = ? AND c.is_leaf ORDER BY c.id", [m.id]).rows()]
        picked = [n for n in stored if n.lower() in lower]
        if not picked:  # the data's classes name no output (or the data is unlabeled): the outputs
            if classes == "dataset" and n_out > MAX_UNNAMED_CLASSES:
                raise UsageError(f"none of the index's classes names one of {m.name}'s {n_out} outputs; give "
                                 "--classes N (the first N outputs) or class names / output numbers")
            picked = names
        if isinstance(classes, int):
            picked = picked[:classes]
    else:
        picked = list(classes)
    out = []
    for name in picked:
        k = _output_index(str(name), names)
        out.append(_Target(f"class:{names[k]}", objective, output=k))
    return out


def _output_index(name: str, names: list[str]) -> int:
    """The output a class name (any case) or an output number names."""
    lower = {n.lower(): k for k, n in enumerate(names)}
    if name.lower() in lower:
        return lower[name.lower()]
    if name.isdigit() and int(name) < len(names):
        return int(name)
    raise NotFoundError(f"the model has no output class {name!r}{did_you_mean(name, names)}; give a class name "
                        f"or an output number 0..{len(names) - 1}")


def _n_outputs(m: _Model) -> int:
    import torch

    if m.n_outputs is None:
        h, w = m.loaded.preprocessing.input_size
        with torch.no_grad():
            m.n_outputs = int(m.loaded.module(torch.zeros(1, 3, h, w)).flatten(1).shape[1])
    return m.n_outputs


def _run_units(m: _Model, layer, targets: list[_Target], params: VizParams, device: str) -> list[dict]:
    """One batch of one layer's units: optimised, measured, as rows for `visualizations`."""
    import torch

    from neuronindex.science.features import crop_geometry

    C = layer.channels
    rectify = all(t.vector is None for t in targets) and layer.pre_activation is not None
    node = layer.pre_activation if rectify else layer.name
    W = torch.zeros(len(targets), C)
    for i, t in enumerate(targets):
        if t.vector is None:
            W[i, t.channel] = 1.0
        else:
            W[i] = torch.as_tensor(t.vector[:C], dtype=torch.float32)
    offsets = torch.tensor([t.offset for t in targets], dtype=torch.float32)
    norm = torch.tensor([t.act_max for t in targets], dtype=torch.float32)
    size_in = m.loaded.preprocessing.input_size
    full = params.objective == "channel" or layer.field is None
    for attempt in ((False, True) if not full else (True,)):
        geo = crop_geometry(layer, size_in, full=attempt)
        obj = UnitObjective(node, W, offsets, params.objective, geo["at"], norm, rectify)
        try:
            res = optimise(m.forward((node,), device), obj, len(targets), geo["size"], params, m.color, device=device,
                           seeds=[image_seed(params.seed, t.target) for t in targets])
            break
        except (RuntimeError, IndexError):  # the model needs its full input: use it
            if attempt:
                raise
    rows = []
    oy, ox = geo["origin"]
    cy, cx = geo["unit"]
    for i, t in enumerate(targets):
        box = None
        if layer.field is not None and params.objective == "unit":
            f = layer.field if t.vector is None else layer.field.union_all()
            x0, y0, x1, y1 = f.box(t.channel if t.vector is None else 0, cy, cx)
            box = (x0 - ox, y0 - oy, x1 - ox, y1 - oy)
        alpha, hue = color_stats(res.images[i], box)
        rows.append(_row(m, t, res, i, params, geo, box, alpha, hue))
    return rows


def _row(m, t: _Target, res: Optimised, i: int, params, geo, box, alpha=None, hue=None, **extra) -> dict:
    h, w = res.images[i].shape[:2]
    act = float(res.activation[i])
    return {"model_id": m.id, "neuron_id": t.neuron_id, "target": t.target, "objective": t.objective,
            "start": extra.pop("start", None), "image_png": png(res.images[i]), "diff_png": extra.pop("diff_png", None),
            "width": w, "height": h, "origin_x": geo["origin"][1], "origin_y": geo["origin"][0],
            "box_x0": box[0] if box else None, "box_y0": box[1] if box else None,
            "box_x1": box[2] if box else None, "box_y1": box[3] if box else None,
            "trace": [float(v) for v in res.trace[i]], "trace_steps": list(res.trace_steps),
            "objective_value": float(res.value[i]), "activation": act if t.act_max else None,
            "activation_ratio": act / t.act_max if t.act_max else None, "color_index": alpha, "hue": hue,
            "predicted": extra.pop("predicted", None), "probability": extra.pop("probability", None),
            "flip_step": extra.pop("flip_step", None), "steps": params.steps, "seed": params.seed,
            "parameters": json.dumps({**params.key(), "color": np.round(m.color, 6).tolist()}),
            "params_hash": params_hash(params, m.color), "seconds": res.seconds / len(res.images)}


def _run_classes(m: _Model, targets: list[_Target], params: VizParams, device: str) -> list[dict]:
    out_node = output_node(m.loaded)
    obj = SumObjective([[Term(1.0, t.objective, output=t.output)] for t in targets], out_node)
    size = m.loaded.preprocessing.input_size
    res = optimise(m.forward((out_node,), device), obj, len(targets), size, params, m.color, device=device,
                   output_node=out_node, seeds=[image_seed(params.seed, t.target) for t in targets])
    names = output_names(m.loaded, _n_outputs(m))
    geo = {"origin": (0, 0)}
    return [_row(m, t, res, i, params, geo, None, *color_stats(res.images[i]),
                 predicted=names[int(res.predicted[-1][i])], probability=float(res.probabilities[i, t.output]))
            for i, t in enumerate(targets)]


def _done(idx, model_id: int, wanted: dict) -> set:
    """(target, objective) pairs already stored from noise with these parameters (params hash)."""
    rows = idx.query("SELECT target, objective, params_hash FROM visualizations WHERE model_id = ? AND start IS NULL",
                     [model_id]).rows()
    return {(r["target"], r["objective"]) for r in rows if r["params_hash"] == wanted.get(r["objective"])}


def _publish(index_dir, rows: list[dict], wait: bool = True) -> None:
    import pyarrow as pa

    from neuronindex import store
    from neuronindex.store import execute, next_id
    from neuronindex.store.writer import insert

    if not rows:
        return
    with store.staged(index_dir, wait=wait) as con:
        for r in rows:
            execute(con, "DELETE FROM visualizations WHERE model_id = ? AND target = ? AND objective = ? AND "
                         "start IS NOT DISTINCT FROM ?", [r["model_id"], r["target"], r["objective"], r["start"]])
        base = next_id(con, "visualizations")
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["id"] = list(range(base, base + len(rows)))
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        cols["created"] = [now] * len(rows)
        types = {"image_png": pa.binary(), "diff_png": pa.binary(), "trace": pa.list_(pa.float64()),
                 "trace_steps": pa.list_(pa.int32()), "created": pa.string()}
        insert(con, "visualizations", cols, types)


def run(index_dir, layers: list[str] | None = None, model: str | None = None, params: VizParams | None = None,
        classes=None, neurons: bool = True, device: str = "cpu", progress: bool = True,
        checkpoint_every: float = default("viz_checkpoint_every"), wait: bool = True, per_layer: int | None = None,
        class_objective: str = "class") -> dict:
    """Optimise an image for every live neuron (and direction) of the stored layers (all, or those
    named; with `per_layer`, the first N live units of each) and, with `classes`, for class
    logits; store them in the index.

    Resumable and idempotent: targets already stored with the same parameters are skipped, and
    what is done is published every `checkpoint_every` seconds, so an interrupted run loses at
    most that much. Returns counts and the time taken."""
    from tqdm import tqdm

    from neuronindex import api

    params = params or VizParams()
    params.validate()
    if isinstance(classes, int) and classes < 1:
        raise UsageError(f"--classes N needs N >= 1, not {classes}")
    if class_objective not in ("class", "prob"):
        raise UsageError(f"a class image maximises its logit (class) or its probability (prob), not {class_objective!r}")
    if per_layer is not None and (not isinstance(per_layer, int) or per_layer < 1):
        raise UsageError(f"--per-layer must be a whole number >= 1, not {per_layer!r}")
    t0 = time.perf_counter()
    done = skipped = 0
    pending: list[dict] = []
    last = time.perf_counter()
    with api.Index(index_dir) as idx:
        plan = []
        for name, rows in _models(idx, model).items():
            m = _open_model(idx, name, rows)
            p = params.resolved(m.loaded.preprocessing.input_size)
            pc = VizParams(**{**asdict(p), "objective": class_objective})  # class images
            hashes = {params.objective: params_hash(p, m.color), class_objective: params_hash(pc, m.color)}
            have = _done(idx, m.id, hashes)
            work = []
            if neurons:
                for layer_row, targets in _layer_targets(idx, name, layers, params.objective):
                    targets = targets[:per_layer] if per_layer else targets
                    todo = [t for t in targets if (t.target, t.objective) not in have]
                    skipped += len(targets) - len(todo)
                    layer = m.graph.lookup(layer_row["node"])
                    # channels and directions in batches of their own: channels of a rectified layer
                    # are optimised on its pre-activation, which a direction's projection cannot use
                    for part in ([t for t in todo if t.vector is None], [t for t in todo if t.vector is not None]):
                        if part:
                            work.append((layer, part))
            if classes:
                todo = [t for t in _class_targets(idx, m, classes, class_objective)
                        if (t.target, class_objective) not in have]
                if todo:
                    work.append((None, todo))
            plan.append((m, p, pc, work))
    total = sum(len(t) for _, _, _, work in plan for _, t in work)
    bar = tqdm(total=total, unit="image", desc="visualize", disable=not progress, dynamic_ncols=True)
    for m, p, pc, work in plan:
        for layer, targets in work:
            for s in range(0, len(targets), p.batch_size):
                chunk = targets[s:s + p.batch_size]
                pending += _run_units(m, layer, chunk, p, device) if layer is not None else \
                    _run_classes(m, chunk, pc, device)
                done += len(chunk)
                bar.update(len(chunk))
                if time.perf_counter() - last >= checkpoint_every:
                    _publish(index_dir, pending, wait)
                    pending, last = [], time.perf_counter()
    bar.close()
    _publish(index_dir, pending, wait)
    return {"optimised": done, "skipped": skipped, "seconds": time.perf_counter() - t0,
            "params": {k: v for k, v in asdict(params).items()}}


def from_image(index_dir, image, target: str, model: str | None = None, params: VizParams | None = None,
               objective: str = "class", device: str = "cpu", output=None, wait: bool = True) -> dict:
    """Push a real image towards a class (Dai 2020 section 2.1: make a cat look like a dog to the
    network) and store the result: the final image, the difference image |final - start| (scaled to
    its maximum), and the first step at which the model predicts the target (`flip_step`). Options
    default to `start_params` (plain pixels, small steps, no transformations). `output`: also write
    the image and OUTPUT-diff.png."""
    import torch

    from neuronindex import api
    from neuronindex.data import load_image

    if objective not in ("class", "prob"):
        raise UsageError(f"a start image is pushed towards a class: objective class (logit) or prob, not {objective!r}")
    params = start_params(params or VizParams())
    params.validate()
    path = Path(image)
    if not path.is_file():
        raise NotFoundError(f"no image file {image}; give the path of a picture to start from")
    with api.Index(index_dir) as idx:
        models = _models(idx, model)
        if len(models) != 1:
            raise UsageError(f"this index holds {len(models)} models; name one with --model")
        name, rows = next(iter(models.items()))
        m = _open_model(idx, name, rows)
    pre = m.loaded.preprocessing
    seen = np.asarray(pre.geometric(load_image(str(path))), dtype=np.float32) / 255.0
    start = torch.as_tensor(seen).permute(2, 0, 1)[None]
    names = output_names(m.loaded, _n_outputs(m))
    k = _output_index(target[6:] if target.startswith("class:") else target, names)
    out_node = output_node(m.loaded)
    p = params.resolved(pre.input_size)
    obj = SumObjective([[Term(1.0, objective, output=k)]], out_node)
    res = optimise(m.forward((out_node,), device), obj, 1, pre.input_size, p, m.color, start=start, device=device,
                   output_node=out_node)
    diff = np.abs(res.images[0].astype(np.float32) - seen * 255)
    diff = (diff / max(float(diff.max()), 1e-6) * 255).round().astype(np.uint8)
    flips = flip_step(res.predicted[:, 0], k)
    prob = float(res.probabilities[0, k])
    t = _Target(f"class:{names[k]}", objective, output=k)
    row = _row(m, t, res, 0, p, {"origin": (0, 0)}, None, *color_stats(res.images[0]), start=str(path.resolve()),
               diff_png=png(diff), predicted=names[int(res.predicted[-1][0])], probability=prob, flip_step=flips)
    _publish(index_dir, [row], wait)
    if output is not None:
        output = Path(output)
        output.write_bytes(row["image_png"])
        output.with_name(output.stem + "-diff.png").write_bytes(row["diff_png"])
    return {"model": name, "target": t.target, "start": row["start"], "before": names[int(res.predicted[0][0])],
            "after": row["predicted"], "probability": prob, "flip_step": flips, "steps": p.steps}
