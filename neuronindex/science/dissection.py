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
`Dissection` tallies, in one pass, per unit the pixels of its upsampled map by (concept, bucket)
and (category area, bucket) at the buckets its threshold can still reach, and per concept its
areas, so at the end |M_k ∩ L_c| and |M_k ∪ L_c| = |M_k| + |L_c| - |M_k ∩ L_c| add up without
keeping maps. The tallies are compiled (numba): a pixel is upsampled only where one of the four
map values it interpolates can reach the unit's floor, and counted in a dense per-unit slab of
buckets from the floor up (the slab follows the floor), or beyond it in an open-addressing table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
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
    return _EDGES


def _lower_edges() -> np.ndarray:
    p = np.arange(SIDE)
    low = np.ldexp(1.0 + (p % (1 << SUB_BITS)) / (1 << SUB_BITS), LOW_EXP + p // (1 << SUB_BITS))
    high = np.ldexp(1.0 + (p % (1 << SUB_BITS) + 1) / (1 << SUB_BITS), LOW_EXP + p // (1 << SUB_BITS))
    low[0] = 0.0  # the first bucket also holds every magnitude below 2^LOW_EXP
    return np.concatenate([-high[::-1], [0.0], low])


_EDGES = _lower_edges()
_EDGES.flags.writeable = False


class TopQuantile:
    """Per unit, counts of its map values over the buckets (see the module's docstring)."""

    def __init__(self, units: int):
        self.units = units
        self.counts = np.zeros((units, BUCKETS), dtype=np.int64)

    def add(self, maps, floor: np.ndarray | None = None) -> np.ndarray:
        """maps (B, K, H, W) (or (B, K)) of the K units, any float type (numpy or torch on the CPU).
        With `floor` (K,) buckets: values below a unit's floor are only counted (in bucket 0), not
        placed: counts from the top stay exact at and above the floor, and so do `top_bucket`
        answers there (a `Dissection`'s floors never exceed its final thresholds). Returns each
        map's maximum (B, K)."""
        a = np.asarray(maps, dtype=np.float32)
        edge = np.full(self.units, -np.inf, np.float32) if floor is None else \
            np.where(floor > 0, lower_edges()[floor], -np.inf).astype(np.float32)
        peaks = np.full((a.shape[0], self.units), -np.inf, np.float32)
        # units last (channels-last maps, as torch often leaves them, need no copy)
        a = a.reshape(a.shape[0], self.units, -1).transpose(0, 2, 1)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        _count(a, a.view(np.int32), edge, self.counts, peaks)
        return peaks

    def merge(self, other: "TopQuantile") -> None:
        self.counts += other.counts

    def top_bucket(self, q: float, total: int | None = None) -> np.ndarray:
        """(K,) the highest bucket whose count from the top reaches ceil(q N), N = `total` (the
        values each unit will have seen; default: those seen so far); 0 where none does yet. With
        a `total` still to come it is a floor: the final answer's bucket is never below it."""
        seen = self.counts.sum(1) if total is None else np.full(self.units, total, dtype=np.int64)
        need = np.ceil(q * seen).clip(min=1).astype(np.int64)
        return _from_top(self.counts, need)

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


@dataclass(frozen=True)
class Annotation:
    """One image's annotations for the tallies: its label maps (L, h, w) of concept ids, the
    categories it is annotated for, and each concept's pixel count."""
    labels: np.ndarray
    cats: np.ndarray
    areas: np.ndarray

    @classmethod
    def of(cls, annotations: dict[int, list[np.ndarray]], n: int) -> "Annotation":
        """From category -> label maps, for concept ids 0..n-1."""
        maps = [np.asarray(lm, dtype=np.int64) for per in annotations.values() for lm in per]
        labels = np.ascontiguousarray(np.stack(maps)) if maps else np.zeros((0, 1, 1), np.int64)
        areas = np.zeros(n, np.int64)
        for lm in maps:
            areas += np.bincount(lm.ravel(), minlength=n)[:n]
        return cls(labels, np.array(sorted(annotations), dtype=np.int64), areas)



@dataclass(frozen=True)
class AnnotatedBatch:
    """A batch's annotations for the tallies: label maps (B, L, h, w) padded with 0 (no concept),
    categories (B, G) padded with -1, and the concepts' pixel counts summed."""
    labels: np.ndarray
    cats: np.ndarray
    areas: np.ndarray

    @classmethod
    def of(cls, anns: list[Annotation]) -> "AnnotatedBatch":
        L = max([a.labels.shape[0] for a in anns] + [0])
        G = max([a.cats.size for a in anns] + [0])
        h, w = next((a.labels.shape[1:] for a in anns if a.labels.shape[0]), (1, 1))
        labels = np.zeros((len(anns), L, h, w), np.int64)
        cats = np.full((len(anns), G), -1, np.int64)
        for b, a in enumerate(anns):
            labels[b, :a.labels.shape[0]] = a.labels
            cats[b, :a.cats.size] = a.cats
        areas = np.sum([a.areas for a in anns], axis=0) if anns else np.zeros(0, np.int64)
        return cls(labels, cats, areas)


class Dissection:
    """Network Dissection of K units in one pass over the concept images.

    `add_maps` streams each batch's native maps into the units' `TopQuantile`; from those counts
    a *floor* per unit follows: the highest bucket whose count from the top already reaches
    ceil(q N) of the N values the unit will see (`total`, known in advance), so the final
    threshold's bucket is never below it (counts only grow). `add_image` then tallies the unit's
    upsampled map on one image by (concept, bucket) and (category area, bucket), only at buckets
    >= the floor; entries that fall below a rising floor are dropped when the table grows. At the
    end the mask M_k is {pixels whose value's bucket >= T_k's bucket} (for values >= 0: value >=
    T_k, exactly), and its intersections and areas are the tallies' sums above that bucket. So
    one forward pass gives the two-pass answer; memory is bounded by units x concepts x live
    buckets, not by the number of images. Tallies of shards that share `total` merge by adding."""

    def __init__(self, units: int, category_of, total: int, q: float, width: int | None = None):
        self.units, self.total, self.q = units, int(total), float(q)
        self.category_of = np.asarray(category_of, dtype=np.int64)  # concept id -> category (index 0 unused)
        self.concepts = len(self.category_of) - 1
        self.categories = int(self.category_of[1:].max()) + 1 if self.concepts else 0
        self.columns = self.concepts + 1 + self.categories  # concepts 0..C, then each category's area
        self.quantile = TopQuantile(units)
        self.floor = np.zeros(units, dtype=np.int64)
        self.loose = np.full(units, -np.inf, dtype=np.float32)
        self.concept_area = np.zeros(self.concepts + 1, dtype=np.int64)
        # counts at bucket base[k] + r (0 <= r < width) in a dense slab per unit, the rest in a table
        self.width = width or int(np.clip(2 ** np.floor(np.log2(max(1, SLAB_CELLS // max(1, units * self.columns)))),
                                          16, 256))
        self.slab = np.zeros((units, self.columns, self.width), dtype=np.int64)
        self.base = np.full(units, -1, dtype=np.int64)  # -1: placed at the first batch
        self.keys = np.full(1 << 12, -1, dtype=np.int64)  # (unit * columns + column) * BUCKETS + bucket
        self.vals = np.zeros(1 << 12, dtype=np.int64)
        self.fill = 0

    def add_maps(self, maps) -> np.ndarray:
        """maps (B, K, H', W'): the native maps of a batch, before its images' `add_image`; returns
        their maxima (B, K)."""
        peaks = self.quantile.add(maps, self.floor)
        self.floor = np.maximum(self.floor, self.quantile.top_bucket(self.q, self.total))
        edge = lower_edges()[self.floor]
        # a pixel interpolates four map values: it can reach the floor only if one of them nearly does
        loose = (edge - np.abs(edge) * 1e-5 - 1e-30).astype(np.float32)
        self.loose = np.where(self.floor > 0, loose, -np.inf).astype(np.float32)
        # the slab starts at the floor and follows it (what falls below the floor can no longer count)
        unplaced = self.base < 0
        self.base[unplaced] = self.floor[unplaced]
        for k in np.nonzero(self.floor - self.base >= self.width // 4)[0]:
            shift = min(int(self.floor[k] - self.base[k]), self.width)
            self.slab[k, :, :self.width - shift] = self.slab[k, :, shift:]
            self.slab[k, :, self.width - shift:] = 0
            self.base[k] += shift
        return peaks

    def add_image(self, maps: np.ndarray, annotations: "dict[int, list[np.ndarray]] | Annotation",
                  grids: list[tuple[np.ndarray, "Grid"]] | None = None, peaks: np.ndarray | None = None) -> None:
        """One image: maps (K, H', W'), its annotations, peaks (K,) if known; see `add_images`."""
        self.add_images(np.asarray(maps)[None], [annotations], grids, None if peaks is None else np.asarray(peaks)[None])

    def add_images(self, maps: np.ndarray, annotations: "list[dict[int, list[np.ndarray]] | Annotation] | AnnotatedBatch",
                   grids: list[tuple[np.ndarray, "Grid"]] | None = None, peaks: np.ndarray | None = None) -> None:
        """maps (B, K, H', W'): the units' native maps on a batch of images (any memory layout;
        channels last is read in place); grids: per group of units sharing a receptive-field
        geometry, (their indexes, the `Grid` onto the masks' pixels); None: the maps are already
        at the masks' resolution. annotations, per image: category -> its label maps ((h, w) ints,
        0 where no concept; several for categories whose pixels can carry more than one label), or
        the same as an `Annotation`; or the batch's as an `AnnotatedBatch` (made once for all
        layers). Only the categories given count for an image. peaks (B, K): each map's maximum,
        if known."""
        if isinstance(annotations, AnnotatedBatch):
            batch = annotations
        else:
            batch = AnnotatedBatch.of([a if isinstance(a, Annotation) else Annotation.of(a, self.concepts + 1)
                                       for a in annotations])
        if not len(batch.labels):
            return
        self.concept_area += batch.areas
        maps = np.asarray(maps, dtype=np.float32)
        if grids is None:
            grids = [(np.arange(self.units), identity_grid(maps.shape[2:]))]
        peaks = maps.max(axis=(2, 3)) if peaks is None else np.asarray(peaks, dtype=np.float32)
        bhwk = maps.transpose(0, 2, 3, 1)
        if not bhwk.flags.c_contiguous:  # the kernel walks positions, every unit at each
            bhwk = np.ascontiguousarray(bhwk)
        labels, cats = batch.labels, batch.cats
        for units, g in grids:
            self.keys, self.vals, self.fill = _tally(
                bhwk, np.asarray(units, dtype=np.int64), peaks, g.fy, g.gy, g.ystart, g.fx, g.gx, g.xstart, self.loose,
                self.floor, labels, cats, self.concepts + 1, self.columns, self.keys, self.vals, self.fill, self.slab,
                self.base)

    def merge(self, other: "Dissection") -> None:
        """Add a shard's tallies (made with the same units, concepts, total and q)."""
        self.quantile.merge(other.quantile)
        self.concept_area += other.concept_area
        self.floor = np.maximum(self.floor, other.floor)
        codes, counts = other._entries()
        self.keys, self.vals, self.fill = _insert_many(self.keys, self.vals, self.fill, codes, counts, self.floor,
                                                        self.columns * BUCKETS)

    def thresholds(self) -> np.ndarray:
        """(K,) T_k, as `TopQuantile.threshold`."""
        return self.quantile.threshold(self.q)

    def entries(self) -> int:
        """Non-zero tally cells, in the slab and the table."""
        return int(np.count_nonzero(self.slab)) + self.fill

    def _entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Every non-zero tally as (code, count): the table's, then the slab's."""
        live = self.keys >= 0
        k, c, r = np.nonzero(self.slab)
        codes = (k * self.columns + c) * BUCKETS + self.base[k] + r
        return np.concatenate([self.keys[live], codes]), np.concatenate([self.vals[live], self.slab[k, c, r]])

    def iou(self) -> np.ndarray:
        """(K, C + 1) IoU of every unit with every concept (column 0, no concept, is 0)."""
        t_bucket = self.quantile.top_bucket(self.q)
        codes, counts = self._entries()
        unit = codes // (self.columns * BUCKETS)
        keep = codes % BUCKETS >= t_bucket[unit]
        cell = codes[keep] // BUCKETS  # unit * columns + column
        sums = np.bincount(cell, weights=counts[keep], minlength=self.units * self.columns)
        sums = sums.astype(np.int64).reshape(self.units, self.columns)
        n = self.concepts + 1
        inter, unit_area = sums[:, :n], sums[:, n:]
        union = unit_area[:, self.category_of] + self.concept_area[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        out[:, 0] = 0.0
        out[self.quantile.counts.sum(1) == 0] = 0.0
        return out


@numba.njit(cache=True, nogil=True)
def _bucket_of_bits(bits) -> int:
    """`buckets` of one float32 given by its bits."""
    mag = bits & 0x7FFFFFFF
    if mag == 0 or mag > 0x7F800000:  # zero, NaN
        return ZERO
    p = (mag >> (23 - SUB_BITS)) - ((127 + LOW_EXP) << SUB_BITS)
    p = min(max(p, 0), SIDE - 1)
    return ZERO + p + 1 if bits >= 0 else ZERO - p - 1


@numba.njit(cache=True, nogil=True)
def _count(values, bits, edge, counts, peaks):  # pragma: no cover - compiled
    """counts[k, bucket] += 1 for every value of values (B, N, K) float32, units last (bits: the
    same as int32); values below edge[k] go to bucket 0 without being placed; peaks[b, k]: maxima."""
    B, N, K = values.shape
    below = np.zeros(K, np.int64)
    zeros = np.zeros(K, np.int64)
    for b in range(B):
        for i in range(N):
            for k in range(K):
                v = values[b, i, k]
                if v > peaks[b, k]:
                    peaks[b, k] = v
                if v < edge[k]:
                    below[k] += 1
                elif v == 0:
                    zeros[k] += 1
                else:
                    counts[k, _bucket_of_bits(bits[b, i, k])] += 1
    for k in range(K):
        counts[k, 0] += below[k]
        counts[k, ZERO] += zeros[k]


@numba.njit(cache=True, nogil=True)
def _from_top(counts, need):  # pragma: no cover - compiled
    """Per unit, the highest bucket whose count from the top reaches need[k]; 0 where none does."""
    K, n = counts.shape
    out = np.zeros(K, np.int64)
    for k in range(K):
        acc = 0
        for b in range(n - 1, -1, -1):
            acc += counts[k, b]
            if acc >= need[k]:
                out[k] = b
                break
    return out


@numba.njit(cache=True, nogil=True)
def _slot(keys, code):  # pragma: no cover - compiled
    mask = keys.size - 1
    i = np.int64((np.uint64(code) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)) & mask
    while keys[i] != -1 and keys[i] != code:
        i = (i + 1) & mask
    return i


@numba.njit(cache=True, nogil=True)
def _rebuilt(keys, vals, floor, per_unit):  # pragma: no cover - compiled
    """The table without entries below their unit's floor, in a size that keeps it under 40% full."""
    live = 0
    for i in range(keys.size):
        c = keys[i]
        if c >= 0 and c % BUCKETS >= floor[c // per_unit]:
            live += 1
    cap = keys.size
    while live * 10 >= cap * 4:
        cap *= 2
    new_keys = np.full(cap, -1, np.int64)
    new_vals = np.zeros(cap, np.int64)
    for i in range(keys.size):
        c = keys[i]
        if c >= 0 and c % BUCKETS >= floor[c // per_unit]:
            j = _slot(new_keys, c)
            new_keys[j] = c
            new_vals[j] = vals[i]
    return new_keys, new_vals, live


@numba.njit(cache=True, nogil=True)
def _insert_many(keys, vals, fill, codes, counts, floor, per_unit):  # pragma: no cover - compiled
    for t in range(codes.size):
        keys, vals, fill = _insert(keys, vals, fill, codes[t], counts[t], floor, per_unit)
    return keys, vals, fill


@numba.njit(cache=True, nogil=True)
def _insert(keys, vals, fill, code, count, floor, per_unit):  # pragma: no cover - compiled
    if fill * 10 >= keys.size * 7:
        keys, vals, fill = _rebuilt(keys, vals, floor, per_unit)
    s = _slot(keys, code)
    if keys[s] == -1:
        keys[s] = code
        fill += 1
    vals[s] += count
    return keys, vals, fill


SLAB_CELLS = 1 << 22  # a layer's dense tallies: units x columns x width int64 cells (32 MB), width 16..256 buckets


@numba.njit(cache=True, nogil=True)
def _tally(maps, units, peaks, fy, gy, ystart, fx, gx, xstart, loose, floor, labels, cats, n, columns, keys, vals,
           fill, slab, base):  # pragma: no cover - compiled
    """Count the upsampled pixels of each unit at buckets >= its floor, by label and by category.

    maps (B, H', W', K) float32 (units last), of which the units `units`; peaks (B, K) their
    maxima; pixel rows ystart[i]..ystart[i+1] interpolate map rows i and min(i + 1, H' - 1) with
    weights gy, fy (columns likewise); loose: per unit a value below which no 2x2 block of the map
    can produce a pixel at its floor. labels (B, L, h, w), 0: none; cats (B, G), -1: none. A count
    at bucket base[k] + r, 0 <= r < width, goes to slab[k, column, r]; any other to the table."""
    B, hh, ww = maps.shape[:3]
    L = labels.shape[1]
    G = cats.shape[1]
    per_unit = columns * BUCKETS
    width = slab.shape[2]
    buf = np.empty(1, np.float32)
    bits = buf.view(np.int32)
    active = np.empty(units.size, np.int64)
    for bi in range(B):
        if G == 0 or cats[bi, 0] < 0:  # not annotated for any category
            continue
        na = 0
        for kk in range(units.size):  # most units, on most images, are nowhere near their top
            if peaks[bi, units[kk]] >= loose[units[kk]]:
                active[na] = units[kk]
                na += 1
        for i in range(hh):
            if ystart[i] == ystart[i + 1]:
                continue
            i1 = min(i + 1, hh - 1)
            for j in range(ww):
                if xstart[j] == xstart[j + 1]:
                    continue
                j1 = min(j + 1, ww - 1)
                for kk in range(na):
                    k = active[kk]
                    a, b, c, d = maps[bi, i, j, k], maps[bi, i, j1, k], maps[bi, i1, j, k], maps[bi, i1, j1, k]
                    if max(max(a, b), max(c, d)) < loose[k]:
                        continue
                    f = floor[k]
                    b0 = base[k]
                    first = k * columns
                    for y in range(ystart[i], ystart[i + 1]):
                        for x in range(xstart[j], xstart[j + 1]):
                            top = a * gx[x] + b * fx[x]
                            bottom = c * gx[x] + d * fx[x]
                            buf[0] = top * gy[y] + bottom * fy[y]
                            bk = _bucket_of_bits(bits[0])
                            if bk < f:
                                continue
                            rel = bk - b0
                            for t in range(G + L):
                                if t < G:
                                    if cats[bi, t] < 0:
                                        continue
                                    col = n + cats[bi, t]
                                else:
                                    col = labels[bi, t - G, y, x]
                                    if col <= 0:
                                        continue
                                if 0 <= rel < width:
                                    slab[k, col, rel] += 1
                                else:
                                    keys, vals, fill = _insert(keys, vals, fill, (first + col) * BUCKETS + bk, 1,
                                                               floor, per_unit)
    return keys, vals, fill


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


@dataclass(frozen=True)
class Grid:
    """Bilinear weights of a unit map onto the masks' pixels, per axis: pixel row y interpolates
    map rows i0 = the map row whose range [ystart[i0], ystart[i0 + 1]) holds y, and min(i0 + 1, H' - 1),
    with weights gy[y] = 1 - fy[y] and fy[y] (float32); columns likewise."""
    fy: np.ndarray
    gy: np.ndarray
    ystart: np.ndarray
    fx: np.ndarray
    gx: np.ndarray
    xstart: np.ndarray


def _axis(n_pix: int, n_units: int, start: float, field: int, stride: float, n_input: int):
    x = (np.arange(n_pix) + 0.5) * (n_input / n_pix) - 0.5
    u = np.clip((x - (start + (field - 1) / 2)) / max(stride, 1e-12), 0, n_units - 1)
    i0 = np.floor(u).astype(np.int64)
    f = (u - i0).astype(np.float32)
    return f, np.float32(1) - f, np.searchsorted(i0, np.arange(n_units + 1)).astype(np.int64)


def grid(size: tuple[int, int], map_shape: tuple[int, int], start: tuple[float, float], field: tuple[int, int],
         stride: float, input_size: tuple[int, int] | None = None) -> Grid:
    """The `Grid` of a map (H', W') onto masks of `size` (h, w) over an input of `input_size`
    (default: `size`): mask pixel p covers input pixels centred at x = (p + 1/2) n_input / n_pix
    - 1/2 and takes the map at unit coordinate (x - (start + (field - 1) / 2)) / stride, clamped to
    the map (unit i sits at the centre of its receptive field)."""
    (h, w), (ih, iw) = size, input_size or size
    fy, gy, ystart = _axis(h, map_shape[0], start[0], field[0], stride, ih)
    fx, gx, xstart = _axis(w, map_shape[1], start[1], field[1], stride, iw)
    return Grid(fy, gy, ystart, fx, gx, xstart)


def identity_grid(shape: tuple[int, int]) -> Grid:
    """A map already at the masks' resolution: each pixel takes its own value."""
    return grid(tuple(shape), tuple(shape), (0.0, 0.0), (1, 1), 1.0)


def upsample_units(maps: np.ndarray, size: tuple[int, int], start: tuple[float, float], field: tuple[int, int],
                   stride: float, input_size: tuple[int, int] | None = None) -> np.ndarray:
    """K maps (K, H', W') that share one field geometry, upsampled to the masks' resolution `size`
    (h, w) of an input of `input_size` (default: `size`) by their `grid`: (K, h, w) float32, the
    very values the tallies threshold."""
    maps = np.asarray(maps, dtype=np.float32)
    g = grid(size, maps.shape[1:], start, field, stride, input_size)
    i0 = np.repeat(np.arange(maps.shape[1]), np.diff(g.ystart))
    j0 = np.repeat(np.arange(maps.shape[2]), np.diff(g.xstart))
    i1, j1 = np.minimum(i0 + 1, maps.shape[1] - 1), np.minimum(j0 + 1, maps.shape[2] - 1)
    top = maps[:, i0][:, :, j0] * g.gx + maps[:, i0][:, :, j1] * g.fx
    bottom = maps[:, i1][:, :, j0] * g.gx + maps[:, i1][:, :, j1] * g.fx
    return top * g.gy[:, None] + bottom * g.fy[:, None]
