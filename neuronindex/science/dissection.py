"""Network Dissection (Bau et al., CVPR 2017) from arrays: each unit's activation threshold over a
concept set and its IoU with every concept's masks, both streamed and mergeable (memory flat in
the number of images: no map is kept).

Threshold. T_k is the top-q quantile (q = 0.005, NetDissect's) of all of unit k's map values over
the concept images. `TopQuantile` counts the values in fine logarithmic buckets read off the
float32 bits: each octave [2^e, 2^(e+1)) cut into 2^SUB_BITS = 64 equal buckets, on each side of
an exact-zero bucket, from 2^LOW_EXP to 2^-LOW_EXP (about 1e-12 to 1e12; magnitudes beyond fall
into the end buckets). The threshold is the lower edge of the bucket that holds the exact
quantile x_q, so
    x_q - |x_q| / 64 < T_k <= x_q   (at most 1.6% of x_q below it; x_q = 0 exactly),
and the share of values >= T_k is at least q (by the values that share x_q's bucket). Counts
add, so batches, shards and merges give one answer.

IoU. A unit's map is upsampled to the mask resolution by its receptive-field geometry (unit
(i, j) sits at the centre of its field, pixels in between are bilinear, `upsample`) and thresholded
at T_k: M_k. For a concept c of category g,
    IoU(k, c) = sum_images |M_k ∩ L_c| / sum_images |M_k ∪ L_c|
over the images annotated for g (an image without g's annotation counts for none of g's concepts).
`IoUTally` keeps per unit and concept the intersections, per unit and category the mask areas,
per concept its areas, so |M_k ∪ L_c| = |M_k| + |L_c| - |M_k ∩ L_c| adds up without keeping maps.
"""
from __future__ import annotations

import numpy as np

SUB_BITS, LOW_EXP = 6, -40
SIDE = -2 * LOW_EXP << SUB_BITS  # buckets per sign
BUCKETS = 2 * SIDE + 1
ZERO = SIDE


def buckets(values) -> np.ndarray:
    """The bucket (0 .. BUCKETS-1) of each value, taken as float32: ZERO for 0 (and NaN), above it
    the positive values in increasing order, below it their mirror images."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    bits = x.view(np.int32) & 0x7FFFFFFF
    p = np.clip((bits >> (23 - SUB_BITS)) - ((127 + LOW_EXP) << SUB_BITS), 0, SIDE - 1)
    sign = np.sign(x).astype(np.int64)
    sign[np.isnan(x)] = 0
    return sign * (p + 1) + ZERO


def lower_edges() -> np.ndarray:
    """(BUCKETS,) the smallest value of each bucket (for negative buckets: their most negative
    end's mirror is the upper one, so the lower edge is -(upper edge of the mirrored bucket))."""
    p = np.arange(SIDE)
    low = np.ldexp(1.0 + (p % (1 << SUB_BITS)) / (1 << SUB_BITS), LOW_EXP + p // (1 << SUB_BITS))
    high = np.ldexp(1.0 + (p % (1 << SUB_BITS) + 1) / (1 << SUB_BITS), LOW_EXP + p // (1 << SUB_BITS))
    low[0] = 0.0  # the first bucket also holds every magnitude below 2^LOW_EXP
    return np.concatenate([-high[::-1], [0.0], low])


class TopQuantile:
    """Per unit, counts of its map values over the buckets (see the module's docstring)."""

    def __init__(self, units: int):
        self.units = units
        self.counts = np.zeros((units, BUCKETS), dtype=np.int64)

    def add(self, maps) -> None:
        """maps (B, K, H, W) (or (B, K)) of the K units, any float type (numpy or torch on the CPU)."""
        a = np.asarray(maps, dtype=np.float32)
        per_unit = np.moveaxis(a, 1, 0).reshape(self.units, -1)
        flat = buckets(per_unit) + (np.arange(self.units, dtype=np.int64) * BUCKETS)[:, None]
        self.counts += np.bincount(flat.ravel(), minlength=self.units * BUCKETS).reshape(self.units, BUCKETS)

    def merge(self, other: "TopQuantile") -> None:
        self.counts += other.counts

    def threshold(self, q: float) -> np.ndarray:
        """(K,) T_k: the lower edge of the bucket holding each unit's top-q quantile (NaN for a unit
        that saw no value)."""
        total = self.counts.sum(1)
        from_top = np.cumsum(self.counts[:, ::-1], axis=1)
        need = np.ceil(q * total).clip(min=1)[:, None]
        b = BUCKETS - 1 - np.argmax(from_top >= need, axis=1)
        out = lower_edges()[b]
        out[total == 0] = np.nan
        return out


def upsample(amap: np.ndarray, size: tuple[int, int], start: tuple[float, float], field: tuple[int, int],
             stride: float) -> np.ndarray:
    """A unit map (H', W') at input resolution `size` (H, W): pixel p takes the map bilinearly
    interpolated at unit coordinate (p - (start + (field - 1) / 2)) / stride, clamped to the map
    (unit (i, j) sits at the centre of its receptive field)."""
    return upsample_units(np.asarray(amap)[None], size, start, field, stride)[0]


class IoUTally:
    """Intersections and areas of K units' thresholded masks with C concepts (ids 1..C; 0 is no
    concept) in G categories (`category_of[c]`: the category of concept c, index 0 unused)."""

    def __init__(self, units: int, category_of: np.ndarray):
        self.units = units
        self.category_of = np.asarray(category_of, dtype=np.int64)
        self.concepts = len(self.category_of) - 1
        self.categories = int(self.category_of[1:].max()) + 1 if self.concepts else 0
        self.inter = np.zeros((units, self.concepts + 1), dtype=np.int64)
        self.unit_area = np.zeros((units, self.categories), dtype=np.int64)
        self.concept_area = np.zeros(self.concepts + 1, dtype=np.int64)

    def add(self, masks: np.ndarray, annotations: dict[int, list[np.ndarray]]) -> None:
        """masks (K, H, W) bool: the units' thresholded maps on one image; annotations: category ->
        its label maps on this image ((H, W) ints, 0 where no concept; several for categories whose
        pixels can carry more than one label). Only the categories given count for this image."""
        K = self.units
        if not annotations:
            return
        masks = np.asarray(masks, dtype=bool)
        area = masks.reshape(K, -1).sum(1)
        n = self.concepts + 1
        unit_of = np.broadcast_to(np.arange(K, dtype=np.int64)[:, None, None] * n, masks.shape)
        for g, label_maps in annotations.items():
            self.unit_area[:, g] += area
            for labels in label_maps:
                labels = np.asarray(labels, dtype=np.int64)
                self.concept_area += np.bincount(labels.ravel(), minlength=n)[:n]
                hit = (unit_of + labels[None])[masks]
                self.inter += np.bincount(hit, minlength=K * n).reshape(K, n)

    def merge(self, other: "IoUTally") -> None:
        self.inter += other.inter
        self.unit_area += other.unit_area
        self.concept_area += other.concept_area

    def iou(self) -> np.ndarray:
        """(K, C + 1) IoU of every unit with every concept (column 0, no concept, is 0)."""
        union = self.unit_area[:, self.category_of] + self.concept_area[None, :] - self.inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(union > 0, self.inter / np.maximum(union, 1), 0.0)
        out[:, 0] = 0.0
        return out


def upsample_units(maps: np.ndarray, size: tuple[int, int], start: tuple[float, float], field: tuple[int, int],
                   stride: float) -> np.ndarray:
    """`upsample` of K maps (K, H', W') that share one field geometry, at once: (K, H, W)."""
    maps = np.asarray(maps)
    out_h, out_w = size
    coords = []
    for n_pix, n_units, s0, f in ((out_h, maps.shape[1], start[0], field[0]), (out_w, maps.shape[2], start[1], field[1])):
        u = (np.arange(n_pix) - (s0 + (f - 1) / 2)) / max(stride, 1e-12)
        coords.append(np.clip(u, 0, n_units - 1))
    uy, ux = coords
    y0, x0 = np.floor(uy).astype(int), np.floor(ux).astype(int)
    y1, x1 = np.minimum(y0 + 1, maps.shape[1] - 1), np.minimum(x0 + 1, maps.shape[2] - 1)
    fy, fx = (uy - y0)[None, :, None], (ux - x0)[None, None, :]
    top = maps[:, y0][:, :, x0] * (1 - fx) + maps[:, y0][:, :, x1] * fx
    bottom = maps[:, y1][:, :, x0] * (1 - fx) + maps[:, y1][:, :, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)
