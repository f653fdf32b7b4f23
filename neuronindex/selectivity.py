"""Selectivity indexes (seed 004, section 3) and the class selectivity index of Morcos et al.

Colour selectivity index alpha (seed 004, eq. 2)
    The NF's pixels in the opponent colour space O1 = (R-G)/sqrt2, O2 = (R+G-2B)/sqrt6,
    O3 = (R+G+B)/sqrt3; weighted PCA with per-pixel weight 1/std (std of that pixel over the
    crops, guarded below by 1 grey level); v = first principal component; alpha = angle(v, b)/90
    with b the intensity axis O3, in [0, 1] (v's sign is arbitrary, so the angle is folded).
    The second moments are taken about the achromatic point at the NF's mean intensity
    (0, 0, mean O3): a uniform colour patch then points at its chroma (alpha near 1), a
    luminance edge along O3 (alpha near 0), and a grey average of many colours has little chroma.
    A floor of 0.03 (about 8 grey levels) added along O3 keeps a faint tint of a near-uniform
    NF from reading as colour selective.
Hue: the angle of v projected on the (O1, O2) plane, v oriented towards the NF's mean chroma;
    0 deg = the O1 (red-green) axis towards red; `hue_name` is the colour name of the most
    saturated colour of that hue at mid-grey intensity.
Colour names: the 11 basic colour terms of Berlin & Kay. Each pixel takes the name of the
    nearest prototype in CIELAB (D65); the prototypes are the sRGB keyword colours of the same
    names in the W3C CSS Color Module Level 4 (grey #808080, brown #a52a2a, ...). This is a
    simple stand-in for a psychophysical model such as Benavente et al. (2008), which seed 004
    cites. Shares are weighted by the same per-pixel weights as the PCA.
Colour response index: 1 - sum a_grey / sum a over the NF's images, a_grey the activation at the
    same unit when the image is shown in greyscale (a response-based measure, not from the NF).
Class selectivity index gamma (seed 004, eqs. 3-4): over the neuron's top N images (N = nf_max,
    100 by default, as in seed 004, 4.3), f_c = sum of w_j over the images of class c / sum of
    w_j; M = fewest classes whose f_c reach th; gamma = (N - M) / (N - 1). With few classes in
    the data (CIFAR-10) gamma is confined near 1 (M <= 10); M itself is then the clearer figure.
    Rolled up the class hierarchy, the same frequencies give generic classes.
CSI (Morcos et al. 2018): (mu_max - mu_rest) / (mu_max + mu_rest + eps) from the class-
    conditional mean activations over the whole dataset; a different index from gamma.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOR_NAMES = ("black", "white", "grey", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
ACHROMATIC = ("black", "white", "grey")
CHROMATIC = tuple(n for n in COLOR_NAMES if n not in ACHROMATIC)
# W3C CSS Color Module Level 4 keyword colours for the basic terms (sRGB)
PROTOTYPES_SRGB = {
    "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (255, 0, 0),
    "orange": (255, 165, 0), "yellow": (255, 255, 0), "green": (0, 128, 0), "blue": (0, 0, 255),
    "purple": (128, 0, 128), "pink": (255, 192, 203), "brown": (165, 42, 42),
}
COLOR_THRESHOLD = 0.4  # alpha >= 0.4: colour selective (seed 004, Fig. 7)
STD_FLOOR = 1.0  # grey levels: guards 1/std where every crop agrees
INTENSITY_FLOOR = 0.03  # opponent units (about 8 grey levels): chroma weaker than this does not count
EPS = 1e-6

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


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] -> CIELAB (D65)."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_PROTO_LAB = srgb_to_lab(np.array([PROTOTYPES_SRGB[n] for n in COLOR_NAMES], dtype=float) / 255.0)


def color_name_of(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> index into COLOR_NAMES of the nearest prototype in CIELAB."""
    lab = srgb_to_lab(np.clip(rgb, 0, 1))
    d = ((lab[..., None, :] - _PROTO_LAB) ** 2).sum(-1)
    return d.argmin(-1)


@dataclass
class ColorSelectivity:
    alpha: float | None
    hue: float | None  # degrees in [0, 360)
    hue_name: str | None
    shares: dict[str, float]
    color_name: str | None  # dominant chromatic name
    color_share: float | None


def color_selectivity(nf: np.ndarray, valid: np.ndarray, std: np.ndarray) -> ColorSelectivity:
    """nf (h, w, 3) in [0, 255]; valid (h, w); std (h, w) grey levels (NaN where unseen)."""
    mask = valid & np.isfinite(std)
    if not mask.any():
        return ColorSelectivity(None, None, None, {}, None, None)
    rgb = nf[mask].astype(float) / 255.0
    weights = 1.0 / np.maximum(std[mask].astype(float), STD_FLOOR)
    weights = weights / weights.sum()
    opp = to_opponent(rgb)
    centre = np.array([0.0, 0.0, float(weights @ opp[:, 2])])
    x = opp - centre
    moment = (x * weights[:, None]).T @ x
    # a floor along the intensity axis: a faint tint of a near-uniform NF stays achromatic
    moment[2, 2] += INTENSITY_FLOOR ** 2
    names = color_name_of(rgb)
    shares = {n: float(weights[names == i].sum()) for i, n in enumerate(COLOR_NAMES) if (names == i).any()}
    chromatic = {n: s for n, s in shares.items() if n in CHROMATIC}
    dominant = max(chromatic, key=chromatic.get) if chromatic else None
    eigvals, eigvecs = np.linalg.eigh(moment)
    v = eigvecs[:, -1]
    chroma_mean = weights @ opp[:, :2]
    if v[:2] @ chroma_mean < 0:
        v = -v
    cos = min(1.0, abs(v[2]) / (np.linalg.norm(v) + EPS))
    alpha = float(np.degrees(np.arccos(cos)) / 90.0)
    hue = hue_name = None
    if np.linalg.norm(v[:2]) > 1e-6:
        hue = float(np.degrees(np.arctan2(v[1], v[0])) % 360.0)
        direction = from_opponent(np.array([v[0], v[1], 0.0]) / np.linalg.norm(v[:2]))
        # the most saturated in-gamut colour of that hue at mid-grey intensity
        grey = np.full(3, 0.5)
        with np.errstate(divide="ignore", invalid="ignore"):
            steps = np.where(direction > 0, (1 - grey) / direction, np.where(direction < 0, -grey / direction, np.inf))
        point = grey + steps.min() * direction
        # the name of the chromatic prototype nearest to that point
        lab = srgb_to_lab(np.clip(point, 0, 1))
        chrom_idx = [COLOR_NAMES.index(n) for n in CHROMATIC]
        d = ((_PROTO_LAB[chrom_idx] - lab) ** 2).sum(-1)
        hue_name = CHROMATIC[int(d.argmin())]
    return ColorSelectivity(alpha, hue, hue_name, shares, dominant, chromatic.get(dominant))


@dataclass
class ClassSelectivity:
    gamma: float | None
    m: int | None
    n: int
    frequencies: list[tuple[str, float]]  # leaf classes, f_c descending
    selected: int  # the first `selected` of `frequencies` form the M classes


def class_selectivity(labels: list[str | None], weights: np.ndarray, threshold: float = 1.0) -> ClassSelectivity:
    """gamma over the NF's N images: labels of the images and their relative activations w_j."""
    pairs = [(l, float(w)) for l, w in zip(labels, weights) if l is not None and np.isfinite(w)]
    n = len(pairs)
    if n == 0:
        return ClassSelectivity(None, None, 0, [], 0)
    total = sum(w for _, w in pairs)
    freq: dict[str, float] = {}
    for label, w in pairs:
        freq[label] = freq.get(label, 0.0) + w / total
    ordered = sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))
    cumulative, m = 0.0, 0
    for _, f in ordered:
        cumulative += f
        m += 1
        if cumulative >= threshold - 1e-9:
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


def csi(class_means: np.ndarray, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """class_means (n_classes, C), NaN for classes without images -> (csi (C,), argmax class (C,))."""
    means = np.where(np.isfinite(class_means), class_means, -np.inf)
    top = means.argmax(0)
    mu_max = means.max(0)
    finite = np.isfinite(class_means)
    k = finite.sum(0)
    total = np.where(finite, class_means, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_rest = (total - mu_max) / (k - 1)
        value = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    value = np.where(k > 1, value, np.nan)
    return value, top
