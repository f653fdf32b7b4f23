"""Selectivity indexes (Rafegas et al. 2020, section 3) and the class selectivity index of Morcos et al.

Colour selectivity index alpha (Rafegas et al. 2020, eq. 2)
    The NF's pixels in the opponent colour space O1 = (R-G)/sqrt2, O2 = (R+G-2B)/sqrt6,
    O3 = (R+G+B)/sqrt3 (RGB in [0, 1]); v = the first principal component of a weighted PCA in
    the sense of Delchambre (2014), the reference Rafegas et al. 2020 gives: per-pixel weights
    w = 1 / max(std, 1 grey level), std = that pixel's standard deviation over the NF's crops
    (the floor keeps a pixel every crop agrees on from taking all the weight); the weighted mean
    mu = sum w x / sum w is subtracted and the covariance is sum w^2 (x-mu)(x-mu)^T / sum w^2
    (Delchambre's (W.X)(W.X)^T / (W W^T) with one weight per pixel for all three channels).
    alpha = angle(v, b) / 90 deg with b the intensity axis O3, in [0, 1] (v's sign is arbitrary,
    so the angle is folded into [0, 90]). No floor and no other centre: the NF's own mean colour
    is removed, so a uniform tint (the brownish average of natural-image crops) is not colour
    selectivity. An NF with no variation at all (weighted variance below (0.5 grey level)^2)
    has no principal component: alpha is NULL.
Mean chroma (`mean_chroma`, not part of Rafegas et al. 2020): the length of the weighted mean colour's
    (O1, O2) part. It sees what eq. 2 cannot: an NF that is one flat saturated colour has little
    variance, so its alpha can be anything. Searched only when asked for (`chroma>0.2`).
Hue: the angle of v on the (O1, O2) plane, 0 deg = +O1 (towards red), 90 deg = +O2; v is
    oriented towards the end of the component whose pixels carry the NF's colour name (an
    opponent red/cyan NF named red points at red), else the more saturated end. `hue_name`: the
    chromatic colour name of the most saturated in-gamut colour in that direction from mid-grey.
Colour names: the 11 basic colour terms with a probability per pixel from `colornames` (a model
    of human colour naming fitted to the XKCD colour survey; see that module). The NF's share of
    a term is the mean probability over its valid pixels, each weighted by its share of the
    weighted variance along the first component, (w (x - mu).v)^2 with alpha's 1/std weights:
    the pixels that make the pattern alpha measures (a yellow ring) count, not the averaged
    background most pixels show, nor pixels the crops disagree on. A flat NF (no component)
    weighs its pixels by w^2. `color_name` is the chromatic term with the largest share.
Colour response index: 1 - sum a_grey / sum a over the NF's images, a_grey the activation at the
    same unit when the image is shown in greyscale (a response-based measure, not from the NF).
Class selectivity index gamma (Rafegas et al. 2020, eqs. 3-4): over the neuron's top N images (N = nf_max,
    100 by default, as in Rafegas et al. 2020, 4.3), f_c = sum of w_j over the images of class c / sum of
    w_j; M = fewest classes whose f_c reach th; gamma = (N - M) / (N - 1). With few classes in
    the data (CIFAR-10) gamma is confined near 1 (M <= 10); M itself is then the clearer figure.
    Rolled up the class hierarchy, the same frequencies give generic classes.
CSI (Morcos et al. 2018): (mu_max - mu_rest) / (mu_max + mu_rest + eps) from the class-
    conditional mean activations over the whole dataset; a different index from gamma.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuronindex.science.colornames import CHROMATIC, chromatic_name, probabilities
from neuronindex.science.colornames import TERMS as COLOR_NAMES
from neuronindex.settings import default

COLOR_THRESHOLD = default("color_threshold")  # alpha >= 0.4: colour selective (Rafegas et al. 2020, Fig. 7)
COLOR_PAIR = default("color_pair")  # the second end's least salience, as a share of the first's
STD_FLOOR = default("std_floor")  # grey levels: guards 1/std where every crop agrees
FLAT_VARIANCE = (0.5 / 255.0) ** 2  # opponent units^2: below this the NF has no principal component

_SQ2, _SQ3, _SQ6 = np.sqrt(2.0), np.sqrt(3.0), np.sqrt(6.0)


def to_opponent(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (..., 3) opponent (O1, O2, O3)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([(r - g) / _SQ2, (r + g - 2 * b) / _SQ6, (r + g + b) / _SQ3], -1)


def from_opponent(opp: np.ndarray) -> np.ndarray:
    s, d, e = opp[..., 2] * _SQ3, opp[..., 0] * _SQ2, opp[..., 1] * _SQ6
    b = (s - e) / 3
    rg = s - b
    return np.stack([(rg + d) / 2, (rg - d) / 2, b], -1)


def weighted_pca(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Delchambre (2014) weighted PCA with one weight per observation (row of x).

    Returns (weighted mean, eigenvalues ascending, eigenvectors as columns)."""
    mean = w @ x / w.sum()
    d = (x - mean) * w[:, None]
    cov = d.T @ d / (w @ w)
    values, vectors = np.linalg.eigh(cov)
    return mean, values, vectors


def hue_name_of(hue: float) -> str:
    """The colour name of the most saturated in-gamut colour at `hue` degrees from mid-grey."""
    t = np.radians(hue)
    direction = from_opponent(np.array([np.cos(t), np.sin(t), 0.0]))
    grey = np.full(3, 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(direction > 0, (1 - grey) / direction, np.where(direction < 0, -grey / direction, np.inf))
    return chromatic_name(np.clip(grey + steps.min() * direction, 0, 1))


@dataclass
class ColorSelectivity:
    alpha: float | None
    hue: float | None  # degrees in [0, 360)
    hue_name: str | None
    shares: dict[str, float]
    color_name: str | None  # dominant chromatic name
    color_share: float | None
    chroma: float | None = None  # chroma of the weighted mean colour (opponent units)
    second: str | None = None  # the other end's name, for a two-colour (opponent) NF
    label: str | None = None  # what a person is told: `red`, `blue/orange`; None below the colour threshold


@dataclass
class End:
    """One end of the NF's first principal component: the pixels on one side of its weighted mean."""
    rgb: np.ndarray  # their colour: mean RGB weighted by w |t| (t = projection on the component)
    area: float  # their share of the pixels' weights w
    chroma: float  # length of the colour's (O1, O2)
    hue: float  # degrees of the colour's (O1, O2) around the achromatic axis
    name: str  # the chromatic colour name of the colour
    chromatic: bool  # the colour's most probable name is chromatic (not black, white or grey)

    @property
    def salience(self) -> float:
        return self.area * self.chroma


def _ends(opp: np.ndarray, rgb: np.ndarray, weights: np.ndarray, mean: np.ndarray, v: np.ndarray) -> list[End]:
    """The two ends of the component, most salient (area x chroma) first."""
    t = (opp - mean) @ v
    ends = []
    for side in (t > 0, t < 0):
        pull = weights[side] * np.abs(t[side])
        if pull.sum() <= 0:
            continue
        colour = pull @ rgb[side] / pull.sum()
        o = to_opponent(colour)
        ends.append(End(colour, float(weights[side].sum() / weights.sum()), float(np.hypot(o[0], o[1])),
                        float(np.degrees(np.arctan2(o[1], o[0])) % 360.0), chromatic_name(colour),
                        COLOR_NAMES[int(probabilities(colour).argmax())] in CHROMATIC))
    return sorted(ends, key=lambda e: -e.salience)


def _opponent(first: End, other: End) -> bool:
    """Both ends count in the name: the other end is a colour of its own (chromatic, another name,
    a hue at least 90 degrees away) and at least COLOR_PAIR as salient as the first."""
    gap = abs(first.hue - other.hue) % 360.0
    return (other.chromatic and other.name != first.name and min(gap, 360.0 - gap) >= 90.0
            and other.salience >= COLOR_PAIR * first.salience)


def color_selectivity(nf: np.ndarray, valid: np.ndarray, std: np.ndarray) -> ColorSelectivity:
    """nf (h, w, 3) in [0, 255]; valid (h, w); std (h, w) grey levels (NaN where unseen)."""
    mask = valid & np.isfinite(std)
    if not mask.any():
        return ColorSelectivity(None, None, None, {}, None, None, None)
    rgb = nf[mask].astype(float) / 255.0
    weights = 1.0 / np.maximum(std[mask].astype(float), STD_FLOOR)
    opp = to_opponent(rgb)
    mean, eigvals, eigvecs = weighted_pca(opp, weights)
    flat = eigvals[-1] <= FLAT_VARIANCE
    # names weigh each pixel by its share of the variance along the first component, with the
    # PCA's own weights: w^2 (x - mu).v^2. The pixels that make the colour pattern alpha measures
    # (a yellow ring) count, not the averaged background most pixels show
    naming = weights ** 2 if flat else (weights * ((opp - mean) @ eigvecs[:, -1])) ** 2
    if naming.sum() <= 0:
        naming = weights
    shares_all = naming @ probabilities(rgb) / naming.sum()
    shares = {n: float(s) for n, s in zip(COLOR_NAMES, shares_all) if s > 0}
    chromatic = {n: shares.get(n, 0.0) for n in CHROMATIC}
    dominant = max(chromatic, key=chromatic.get)
    chroma = float(np.hypot(mean[0], mean[1]))
    alpha = hue = hue_name = second = None
    if not flat:
        v = eigvecs[:, -1]
        alpha = float(np.degrees(np.arccos(min(1.0, abs(v[2])))) / 90.0)
        if np.hypot(v[0], v[1]) > 1e-9:
            ends = _ends(opp, rgb, weights, mean, v)
            if ends:
                # the hue and the name are the dominant end's: what a person sees first in the NF
                first = ends[0]
                dominant, hue = first.name, first.hue
                hue_name = hue_name_of(hue)
                if len(ends) > 1 and _opponent(first, ends[1]):
                    second = ends[1].name
            else:
                hue = float(np.degrees(np.arctan2(v[1], v[0])) % 360.0)
                hue_name = hue_name_of(hue)
    label = None
    if alpha is not None and alpha >= COLOR_THRESHOLD:
        label = dominant if second is None else f"{dominant}/{second}"
    return ColorSelectivity(alpha, hue, hue_name, shares, dominant, chromatic[dominant], chroma, second, label)


@dataclass
class ClassSelectivity:
    gamma: float | None
    m: int | None
    n: int
    frequencies: list[tuple[str, float]]  # leaf classes, f_c descending
    selected: int  # the first `selected` of `frequencies` form the M classes


def class_selectivity(labels: list[str | None], weights: np.ndarray, threshold: float = 1.0) -> ClassSelectivity:
    """gamma over the neuron's N top images: their labels and relative activations w_j = a_j / a_max.

    Only classes with a positive summed weight have a frequency: an image that does not
    activate the neuron (w_j <= 0) counts in N but names no class, so M never counts it. With
    th = 1, M is exactly the number of such classes (no float round-off decides it)."""
    pairs = [(l, max(float(w), 0.0)) for l, w in zip(labels, weights) if l is not None and np.isfinite(w)]
    n = len(pairs)
    total = sum(w for _, w in pairs)
    if n == 0 or total <= 0:
        return ClassSelectivity(None, None, n, [], 0)
    freq: dict[str, float] = {}
    for label, w in pairs:
        if w > 0:
            freq[label] = freq.get(label, 0.0) + w
    ordered = sorted(((label, w / total) for label, w in freq.items()), key=lambda kv: (-kv[1], kv[0]))
    if threshold >= 1.0:
        m = len(ordered)
    else:
        cumulative, m = 0.0, 0
        for _, f in ordered:
            cumulative += f
            m += 1
            if cumulative >= threshold * (1 - 1e-9):
                break
    gamma = (n - m) / (n - 1) if n > 1 else None
    return ClassSelectivity(gamma, m, n, ordered, m)


def roll_up(frequencies: list[tuple[str, float]], ancestors) -> dict[str, float]:
    """Frequencies of every ancestor class: the sum over its descendant leaves."""
    out: dict[str, float] = {}
    for leaf, f in frequencies:
        for a in ancestors(leaf):
            out[a] = out.get(a, 0.0) + f
    return out


DEAD_RELATIVE = default("dead_relative")
ACTIVITY_FLOOR = default("activity_floor")


def weak_neurons(act_max: np.ndarray, floor: float = ACTIVITY_FLOOR) -> np.ndarray:
    """Neurons of one layer whose a_max is below `floor` x the layer's median a_max (over firing
    neurons). They keep their statistics, but their selectivity indexes rest on a few tiny
    activations (a near-silent unit gets CSI near 1 from noise), so rankings leave them out."""
    act_max = np.asarray(act_max, dtype=float)
    firing = np.isfinite(act_max) & (act_max > 0)
    scale = float(np.median(act_max[firing])) if firing.any() else 0.0
    with np.errstate(invalid="ignore"):
        return ~(act_max >= floor * scale) | ~firing


def dead_neurons(act_max: np.ndarray, act_std: np.ndarray) -> np.ndarray:
    """Neurons of one layer with (near) zero activation range over the dataset: they make no
    colour or class claims.

    Dead: never above 0 (a_max <= 0), or constant (std of the per-image activation at most
    1e-6 a_max: e.g. a bias-only output of 8e-14 on every image), or negligible (a_max at most
    1e-6 of the layer's median a_max over its firing neurons)."""
    act_max = np.asarray(act_max, dtype=float)
    act_std = np.asarray(act_std, dtype=float)
    firing = np.isfinite(act_max) & (act_max > 0)
    scale = float(np.median(act_max[firing])) if firing.any() else 0.0
    with np.errstate(invalid="ignore"):
        alive = firing & (act_std > DEAD_RELATIVE * np.abs(act_max)) & (act_max > DEAD_RELATIVE * scale)
    return ~alive


def csi(class_means: np.ndarray, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """class_means (n_classes, C), NaN for classes without images -> (csi (C,), argmax class (C,)).

    The index assumes non-negative activations (rectified units): where a class mean is negative
    (a pre-activation layer, a direction's centred map) it is NaN rather than a number outside [0, 1]."""
    means = np.where(np.isfinite(class_means), class_means, -np.inf)
    top = means.argmax(0)
    mu_max = means.max(0)
    finite = np.isfinite(class_means)
    k = finite.sum(0)
    total = np.where(finite, class_means, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_rest = (total - mu_max) / (k - 1)
        value = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    negative = (np.where(finite, class_means, 0.0) < 0).any(0)
    value = np.where((k > 1) & ~negative, value, np.nan)
    return value, top
