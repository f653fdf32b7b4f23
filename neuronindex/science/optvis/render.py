"""The optimisation loop of activation maximisation (Dai 2020 section 2; Olah et al. 2017): its
parameters (`VizParams`), the render loop (`optimise`: Adam on a parameterised image through random
transformations, regularised), the differentiable forward it runs, and what is measured on the result."""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from neuronindex.errors import UsageError
from neuronindex.nets.extract import Extractor
from neuronindex.science.optvis.objectives import total_variation
from neuronindex.science.optvis.param import FourierImage, PixelImage, RawImage
from neuronindex.science.optvis.transforms import random_affine
from neuronindex.science.selectivity import color_selectivity
from neuronindex.settings import default

TRACE_EVERY = 32


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

    if box is not None:
        x0, y0, x1, y1 = box
        image = image[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
    if image.size == 0:
        return None, None
    c = color_selectivity(image.astype(np.float32), np.ones(image.shape[:2], bool), np.ones(image.shape[:2], np.float32))
    return c.alpha, c.hue


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", compress_level=3)
    return buf.getvalue()
