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

    def top_bucket(self, q: float, total: int | None = None) -> np.ndarray:
        """(K,) the highest bucket whose count from the top reaches ceil(q N), N = `total` (the
        values each unit will have seen; default: those seen so far); 0 where none does yet. With
        a `total` still to come it is a floor: the final answer's bucket is never below it."""
        seen = self.counts.sum(1)
        need = np.ceil(q * (seen if total is None else np.full_like(seen, total))).clip(min=1)[:, None]
        from_top = np.cumsum(self.counts[:, ::-1], axis=1)
        reached = from_top[:, -1:] >= need
        return np.where(reached[:, 0], BUCKETS - 1 - np.argmax(from_top >= need, axis=1), 0)

    def threshold(self, q: float) -> np.ndarray:
        """(K,) T_k: the lower edge of the bucket holding each unit's top-q quantile (NaN for a unit
        that saw no value)."""
        out = lower_edges()[self.top_bucket(q)]
        out[self.counts.sum(1) == 0] = np.nan
        return out


def upsample(amap: np.ndarray, size: tuple[int, int], start: tuple[float, float], field: tuple[int, int],
             stride: float, input_size: tuple[int, int] | None = None) -> np.ndarray:
    """A unit map (H', W') at mask resolution `size` (h, w): see `upsample_units`."""
    return upsample_units(np.asarray(amap)[None], size, start, field, stride, input_size)[0]


class Dissection:
    """Network Dissection of K units in one pass over the concept images.

    `add_maps` streams each batch's native maps into the units' `TopQuantile`; from those counts
    a *floor* per unit follows: the highest bucket whose count from the top already reaches
    ceil(q N) of the N values the unit will see (`total`, known in advance), so the final
    threshold's bucket is never below it (counts only grow). `add_image` then tallies the unit's
    upsampled map on one image by (concept, bucket) and (category area, bucket), sparsely and only
    at buckets >= the floor; buckets that fall below a rising floor are dropped. At the end the
    mask M_k is {pixels whose value's bucket >= T_k's bucket} (for values >= 0: value >= T_k,
    exactly), and its intersections and areas are the tallies' sums above that bucket. So one
    forward pass gives the two-pass answer; memory is bounded by units x concepts x live buckets,
    not by the number of images. Tallies of shards that share `total` merge by adding."""

    def __init__(self, units: int, category_of, total: int, q: float):
        self.units, self.total, self.q = units, int(total), float(q)
        self.category_of = np.asarray(category_of, dtype=np.int64)  # concept id -> category (index 0 unused)
        self.concepts = len(self.category_of) - 1
        self.categories = int(self.category_of[1:].max()) + 1 if self.concepts else 0
        self.columns = self.concepts + 1 + self.categories  # concepts 0..C, then each category's area
        self.quantile = TopQuantile(units)
        self.floor = np.zeros(units, dtype=np.int64)
        self.concept_area = np.zeros(self.concepts + 1, dtype=np.int64)
        self.codes = np.zeros(0, dtype=np.int64)  # sorted (unit, column, bucket) codes
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add_maps(self, maps) -> None:
        """maps (B, K, H', W'): the native maps of a batch, before its images' `add_image`."""
        self.quantile.add(maps)
        self.floor = np.maximum(self.floor, self.quantile.top_bucket(self.q, self.total))

    def add_image(self, up: np.ndarray, annotations: dict[int, list[np.ndarray]]) -> None:
        """up (K, h, w): the units' maps on one image upsampled to the masks' resolution;
        annotations: category -> its label maps on this image ((h, w) ints, 0 where no concept;
        several for categories whose pixels can carry more than one label). Only the categories
        given count for this image."""
        if not annotations:
            return
        n = self.concepts + 1
        for label_maps in annotations.values():
            for labels in label_maps:
                self.concept_area += np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=n)[:n]
        b = buckets(up).reshape(self.units, -1)
        unit, pos = np.nonzero(b >= self.floor[:, None])
        if not unit.size:
            return
        bucket = b[unit, pos]
        base = unit * self.columns
        for g, label_maps in annotations.items():
            self._queue((base + n + g) * BUCKETS + bucket)
            for labels in label_maps:
                lab = np.asarray(labels, dtype=np.int64).ravel()[pos]
                on = lab > 0
                self._queue((base[on] + lab[on]) * BUCKETS + bucket[on])

    def _queue(self, codes: np.ndarray) -> None:
        self._pending.append(codes)
        self._pending_size += codes.size
        if self._pending_size > 1 << 23:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            new, counts = np.unique(np.concatenate(self._pending), return_counts=True)
            self._pending, self._pending_size = [], 0
            self._combine(new, counts)
        keep = self.codes % BUCKETS >= self.floor[self.codes // (self.columns * BUCKETS)]
        self.codes, self.counts = self.codes[keep], self.counts[keep]

    def _combine(self, codes: np.ndarray, counts: np.ndarray) -> None:
        if self.codes.size:
            codes, inverse = np.unique(np.concatenate([self.codes, codes]), return_inverse=True)
            counts = np.bincount(inverse, weights=np.concatenate([self.counts, counts]),
                                 minlength=codes.size).astype(np.int64)
        self.codes, self.counts = codes, counts

    def merge(self, other: "Dissection") -> None:
        """Add a shard's tallies (made with the same units, concepts, total and q)."""
        other._flush()
        self.quantile.merge(other.quantile)
        self.concept_area += other.concept_area
        self.floor = np.maximum(self.floor, other.floor)
        self._flush()
        self._combine(other.codes, other.counts)
        self._flush()

    def thresholds(self) -> np.ndarray:
        """(K,) T_k, as `TopQuantile.threshold`."""
        return self.quantile.threshold(self.q)

    def iou(self) -> np.ndarray:
        """(K, C + 1) IoU of every unit with every concept (column 0, no concept, is 0)."""
        self._flush()
        t_bucket = self.quantile.top_bucket(self.q)
        unit = self.codes // (self.columns * BUCKETS)
        keep = self.codes % BUCKETS >= t_bucket[unit]
        cell = (self.codes[keep] // BUCKETS)  # unit * columns + column
        sums = np.bincount(cell, weights=self.counts[keep], minlength=self.units * self.columns)
        sums = sums.astype(np.int64).reshape(self.units, self.columns)
        n = self.concepts + 1
        inter, unit_area = sums[:, :n], sums[:, n:]
        union = unit_area[:, self.category_of] + self.concept_area[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        out[:, 0] = 0.0
        out[self.quantile.counts.sum(1) == 0] = 0.0
        return out


class TopImages:
    """Per unit, the n images whose map has the highest spatial maximum (ties: the earlier image;
    images must arrive in increasing id order)."""

    def __init__(self, units: int, n: int = 4):
        self.values = np.full((units, n), -np.inf)
        self.ids = np.full((units, n), -1, dtype=np.int64)

    def add(self, maxima: np.ndarray, ids: np.ndarray) -> None:
        """maxima (B, K): each image's spatial maximum per unit; ids (B,)."""
        n = self.values.shape[1]
        values = np.concatenate([self.values, np.asarray(maxima, dtype=float).T], 1)
        ids = np.concatenate([self.ids, np.broadcast_to(np.asarray(ids, dtype=np.int64), values[:, n:].shape)], 1)
        order = np.argsort(-values, axis=1, kind="stable")[:, :n]
        self.values = np.take_along_axis(values, order, 1)
        self.ids = np.take_along_axis(ids, order, 1)


def interpolation(n_pix: int, n_units: int, start: float, field: int, stride: float, n_input: int) -> np.ndarray:
    """(n_pix, n_units) bilinear weights along one axis: mask pixel p covers input pixels whose
    centre is x = (p + 1/2) n_input / n_pix - 1/2; it takes the map at unit coordinate
    (x - (start + (field - 1) / 2)) / stride, clamped to the map (unit i sits at the centre of its
    receptive field)."""
    x = (np.arange(n_pix) + 0.5) * (n_input / n_pix) - 0.5
    u = np.clip((x - (start + (field - 1) / 2)) / max(stride, 1e-12), 0, n_units - 1)
    i0 = np.floor(u).astype(int)
    i1 = np.minimum(i0 + 1, n_units - 1)
    w = np.zeros((n_pix, n_units), np.float32)
    np.add.at(w, (np.arange(n_pix), i0), (1 - (u - i0)).astype(np.float32))
    np.add.at(w, (np.arange(n_pix), i1), (u - i0).astype(np.float32))
    return w


def upsample_units(maps: np.ndarray, size: tuple[int, int], start: tuple[float, float], field: tuple[int, int],
                   stride: float, input_size: tuple[int, int] | None = None) -> np.ndarray:
    """K maps (K, H', W') that share one field geometry, upsampled to the masks' resolution `size`
    (h, w) of an input of `input_size` (default: `size`), bilinearly by the receptive field
    (`interpolation` along each axis): (K, h, w) float32."""
    maps = np.asarray(maps, dtype=np.float32)
    (h, w), (ih, iw) = size, input_size or size
    wy = interpolation(h, maps.shape[1], start[0], field[0], stride, ih)
    wx = interpolation(w, maps.shape[2], start[1], field[1], stride, iw)
    return np.matmul(np.matmul(wy, maps), wx.T)
