"""Streaming per-neuron statistics: add(batch) / result() / state_dict() / merge().

One LayerStats may hold the channels of several layers side by side (`Summaries` or `combine`,
then `split`), so each batch costs one top-k merge whatever the number of layers.

Memory is O(channels x ranks), never O(images). A neuron's activation for an image is the spatial
maximum of its channel's map; its location (y, x) is the first maximum in row-major order.

Kept per channel:
  - running top-L (L = max(top_k, curve_len)) of (activation, image position, y, x), ordered by
    activation descending and image position ascending, so ties are broken by image and the
    result does not depend on batch size or on how images were split into shards;
  - count, sum and sum of squares of the per-image activation (float64) -> mean, std;
  - positions where the unit does not fire (<= 0) over all spatial positions -> sparsity;
  - per-class sums and counts of the per-image activation -> class-conditional means (CSI);
  - activations of the first `probe_size` images (the probe sample);
  - a histogram of the per-image activation on fixed log-linear buckets read off the float32 bits
    (8 per octave, 6-12.5% of their value wide, signed, exact zero apart; as HdrHistogram and
    Prometheus' native histograms do), so shards add up exactly and the range need not be known
    in advance; `histogram()` re-bins it linearly for display and SQL;
  - running bottom-k of (activation, image position, y, x): the images with the *lowest* spatial
    maximum (at the location of that maximum), ordered by activation ascending and image
    position ascending (the top list's tie rule); locations are taken only for pairs at or below
    the channel's k-th lowest value, as for the top lists.
The maps are summarised first (`summaries`: spatial maxima, their locations and firing counts,
inside the model's graph while each map is in cache); locations are kept only for (image,
channel) pairs at or above the channel's current k-th value: only those can enter a top list.
The compiled loops live in `kernels`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from neuronindex.nets import kernels, summaries
from neuronindex.science.dictionaries import PositionSample

NO_IMAGE = np.iinfo(np.int64).max
# activation histogram (see hist_buckets): 2^HIST_SUB buckets per octave from 2^HIST_LOW to 2^-HIST_LOW
# on each side of an exact-zero bucket, values beyond clipped into the end buckets
HIST_SUB, HIST_LOW = 3, -20
HIST_SIDE = -2 * HIST_LOW << HIST_SUB  # buckets per sign
HIST_BUCKETS = 2 * HIST_SIDE + 1
HIST_ZERO = HIST_SIDE


class LayerStats:
    def __init__(self, channels: int, top_k: int = 100, curve_len: int = 400, n_classes: int = 0,
                 probe_size: int = 2048, device="cpu", spatial_means: bool = False, bottom_k: int = 0):

        import torch

        self.channels, self.top_k, self.curve_len = channels, top_k, curve_len
        self.n_classes, self.probe_size = n_classes, probe_size
        self.length = max(top_k, curve_len)
        L, C = self.length, channels
        dev = torch.device(device)
        self.values = torch.full((C, L), -float("inf"), device=dev)
        self.ids = torch.full((C, L), NO_IMAGE, dtype=torch.long, device=dev)
        self.ys = torch.full((C, L), -1, dtype=torch.int32, device=dev)
        self.xs = torch.full((C, L), -1, dtype=torch.int32, device=dev)
        self.count = 0
        self.positions = torch.zeros(C, dtype=torch.long, device=dev)
        # mean and sum of squared deviations of the per-image activation, by Chan's update
        self.mean = torch.zeros(C, dtype=torch.float64, device=dev)
        self.m2 = torch.zeros(C, dtype=torch.float64, device=dev)
        self.silent = torch.zeros(C, dtype=torch.long, device=dev)
        self.class_sum = torch.zeros((max(n_classes, 1), C), dtype=torch.float64, device=dev)
        self.class_count = torch.zeros(max(n_classes, 1), dtype=torch.long, device=dev)
        # class sums of each map's spatial mean (Morcos et al.'s activation), when pass 1 takes it
        self.class_mean_sum = torch.zeros((max(n_classes, 1), C), dtype=torch.float64, device=dev)
        self.has_spatial = spatial_means
        self.probe = torch.zeros((probe_size, C), dtype=torch.float32, device=dev)
        self.probe_filled = torch.zeros(probe_size, dtype=torch.bool, device=dev)
        self.bottom_k = bottom_k
        self.low_values = torch.full((C, bottom_k), float("inf"), device=dev)
        self.low_ids = torch.full((C, bottom_k), NO_IMAGE, dtype=torch.long, device=dev)
        self.low_ys = torch.full((C, bottom_k), -1, dtype=torch.int32, device=dev)
        self.low_xs = torch.full((C, bottom_k), -1, dtype=torch.int32, device=dev)
        self.hist = torch.zeros((C, HIST_BUCKETS), dtype=torch.long, device=dev)
        self._hist_offsets = torch.arange(C, device=dev) * HIST_BUCKETS  # row starts in the flat view
        self._hist_one = torch.ones(1, dtype=torch.long, device=dev)
        self.last_id = -1

    # ------------------------------------------------------------------ streaming
    def threshold(self):
        """The k-th value per channel: a pair below it cannot enter the top list."""
        return self.values[:, -1]

    def low_threshold(self):
        """The k-th lowest value per channel (None without bottom lists): a pair above it cannot
        enter the bottom list."""
        return self.low_values[:, -1] if self.bottom_k else None

    def add(self, acts, ids, labels=None) -> None:
        """acts (B, C, H, W); ids (B,) image positions, increasing; labels (B,) class index or -1."""
        import torch

        if acts.shape[0] == 0:
            return

        summary = summaries.summarize(acts, self.threshold())
        low_loc = None
        if self.bottom_k:
            low_loc = torch.full_like(summary[2], -1)
            b, c = (summary[0].to(self.low_values.device) <= self.low_values[:, -1]).nonzero(as_tuple=True)
            if len(b):
                low_loc[b, c] = acts[b.to(acts.device), c.to(acts.device)].flatten(1).argmax(1).to(low_loc.device)
        self.add_summary(summary, ids, labels, low_loc=low_loc)

    def add_summary(self, summary, ids, labels=None, means=None, low_loc=None) -> None:
        """Fold in one batch summarised by `summarize` (with this object's threshold); means
        (B, C): each map's spatial mean, for the class means of Morcos et al.'s CSI; low_loc (B, C):
        the flat location of the maximum of the pairs at or below `low_threshold()` (-1 elsewhere)."""
        import torch

        vals, firing, loc, per_image, width = summary  # per_image, width: int or (C,) tensors
        B = vals.shape[0]
        if B == 0:
            return
        ids = ids.to(self.values.device)
        v64 = vals.double()
        batch_mean = v64.mean(0)
        self._fold_moments(B, batch_mean, ((v64 - batch_mean) ** 2).sum(0))
        self.count += B
        self.positions += B * per_image
        self.silent += (B * per_image - firing.round().long())
        if labels is not None and self.n_classes:
            labels = labels.to(vals.device)
            known = labels >= 0
            if known.any():
                self.class_sum.index_add_(0, labels[known], v64[known])
                if means is not None:
                    self.class_mean_sum.index_add_(0, labels[known], means.to(v64.device, torch.float64)[known])
                self.class_count += torch.bincount(labels[known], minlength=self.class_sum.shape[0])
        in_probe = ids < self.probe_size
        if in_probe.any():
            self.probe[ids[in_probe]] = vals[in_probe]
            self.probe_filled[ids[in_probe]] = True
        self._update_top(vals, loc, width, ids)
        self._update_bottom(vals, ids, low_loc, width)
        if self.hist is not None:
            flat = hist_buckets(vals.to(self.hist.device)) + self._hist_offsets
            self.hist.view(-1).index_add_(0, flat.ravel(), self._hist_one.expand(flat.numel()))

    def _update_bottom(self, vals, ids, low_loc=None, width=1) -> None:
        """Merge the batch into the running bottom lists (value ascending, then image ascending)."""
        import torch

        if self.bottom_k == 0:
            return
        vals = vals.to(self.low_values.device, torch.float32)
        cand = vals <= self.low_values[:, -1]  # (B, C): at or below the channel's k-th lowest
        rows = cand.any(1).nonzero(as_tuple=True)[0]
        if len(rows) == 0:
            return
        vals, cand, ids = vals[rows], cand[rows], ids[rows]
        B, C = vals.shape
        dev = vals.device
        new_vals = torch.where(cand, vals, torch.tensor(float("inf"), device=dev)).T
        if low_loc is None:
            loc = torch.full((C, B), -1, dtype=torch.long, device=dev)
        else:
            loc = low_loc.to(dev)[rows].T.long()
        w = (width.to(dev).long() if torch.is_tensor(width) else torch.full((C,), int(width), device=dev)).view(C, 1)
        new_y = torch.where(loc >= 0, loc // w, -1).int()
        new_x = torch.where(loc >= 0, loc % w, -1).int()
        all_vals = torch.cat([self.low_values, new_vals], 1)
        all_ids = torch.cat([self.low_ids, ids.to(dev).view(1, B).expand(C, B)], 1)
        order = _lexsort(-all_vals, all_ids)[:, : self.bottom_k]
        self.low_values = torch.gather(all_vals, 1, order)
        self.low_ids = torch.gather(all_ids, 1, order)
        self.low_ys = torch.gather(torch.cat([self.low_ys, new_y], 1), 1, order)
        self.low_xs = torch.gather(torch.cat([self.low_xs, new_x], 1), 1, order)

    def _update_top(self, vals, loc, width, ids) -> None:
        """Merge the batch's candidates (loc >= 0) into the running top lists."""
        import torch

        if self.values.device.type != "cpu":
            return self._update_top_torch(vals, loc, width, ids)
        self.last_id = max(self.last_id, int(ids.max()))
        widths = width.long() if torch.is_tensor(width) else torch.full((self.channels,), int(width), dtype=torch.long)
        lists = [t.numpy() for t in (self.values, self.ids, self.ys, self.xs)]
        batch = [np.ascontiguousarray(a.numpy(), dtype=d) for a, d in
                 ((vals, np.float32), (loc, np.int64), (ids, np.int64), (widths, np.int64))]
        lib = kernels.native()
        if lib is None or not all(a.flags.c_contiguous for a in lists):
            return kernels.merge_top(*lists, *batch)
        C, L = self.values.shape
        if batch[0].shape != batch[1].shape or batch[0].shape[1] != C or batch[2].shape != batch[0].shape[:1] \
                or batch[3].shape != (C,):
            raise ValueError(f"a batch of {C} channels was expected, got values {batch[0].shape}")
        lib.merge_top(*(a.ctypes.data for a in lists), C, L, *(a.ctypes.data for a in batch), batch[0].shape[0],
                      torch.get_num_threads())

    def _update_top_torch(self, vals, loc, width, ids) -> None:
        """`_update_top` by sorting (any device)."""
        import torch

        ordered = bool(ids.min() > self.last_id) and (len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()))
        self.last_id = max(self.last_id, int(ids.max()))
        cand = loc >= 0  # (B, C): at or above the channel's k-th value when the batch started
        rows = cand.any(1).nonzero(as_tuple=True)[0]
        if len(rows) == 0:
            return
        # only images with at least one candidate take part in the merge
        vals, loc, ids = vals[rows], loc[rows], ids[rows]
        B, C = vals.shape
        dev = vals.device
        new_vals = torch.where(cand[rows], vals, torch.tensor(-float("inf"), device=dev)).T  # (C, B)
        all_vals = torch.cat([self.values, new_vals], 1)
        all_ids = torch.cat([self.ids, ids.view(1, B).expand(C, B)], 1)
        batch_col = torch.cat([torch.full((C, self.length), -1, dtype=torch.long, device=dev),
                               torch.arange(B, device=dev).view(1, B).expand(C, B)], 1)
        if ordered:
            # existing entries have smaller ids than the batch, which is in id order: a stable
            # descending sort on value alone keeps ties in id order
            order = torch.sort(all_vals, dim=1, descending=True, stable=True).indices
        else:
            order = _lexsort(all_vals, all_ids)
        order = order[:, : self.length]
        cols = torch.gather(batch_col, 1, order)
        keep_old = cols < 0
        old_index = torch.where(keep_old, order, torch.zeros_like(order))
        self.values = torch.gather(all_vals, 1, order)
        self.ids = torch.gather(all_ids, 1, order)
        self.ys = torch.where(keep_old, torch.gather(self.ys, 1, old_index), torch.full_like(self.ys, -1))
        self.xs = torch.where(keep_old, torch.gather(self.xs, 1, old_index), torch.full_like(self.xs, -1))
        need = ~keep_old & torch.isfinite(self.values)
        if bool(need.any()):
            ch, rank = need.nonzero(as_tuple=True)
            where = loc[cols[ch, rank], ch]  # every entrant was >= the threshold, so has a location
            w = width[ch] if torch.is_tensor(width) else width
            self.ys[ch, rank] = (where // w).int()
            self.xs[ch, rank] = (where % w).int()

    # ------------------------------------------------------------------ merge / state
    def merge(self, other: "LayerStats") -> None:
        """Fold another run over a disjoint set of images into this one."""
        import torch

        dev = self.mean.device
        self._fold_moments(other.count, other.mean.to(dev), other.m2.to(dev))
        self.count += other.count
        self.positions += other.positions
        self.silent += other.silent.to(dev)
        self.class_sum += other.class_sum.to(dev)
        self.class_mean_sum += other.class_mean_sum.to(dev)
        if self.has_spatial != other.has_spatial:
            raise ValueError("one state has the spatial means (CSI of Morcos et al.) and the other not")
        self.class_count += other.class_count.to(dev)
        filled = other.probe_filled.to(dev)
        self.probe[filled] = other.probe.to(dev)[filled]
        self.probe_filled |= filled
        all_vals = torch.cat([self.values, other.values.to(self.values.device)], 1)
        all_ids = torch.cat([self.ids, other.ids.to(self.values.device)], 1)
        all_ys = torch.cat([self.ys, other.ys.to(self.values.device)], 1)
        all_xs = torch.cat([self.xs, other.xs.to(self.values.device)], 1)
        order = _lexsort(all_vals, all_ids)[:, : self.length]
        self.values = torch.gather(all_vals, 1, order)
        self.ids = torch.gather(all_ids, 1, order)
        self.ys = torch.gather(all_ys, 1, order)
        self.xs = torch.gather(all_xs, 1, order)
        if self.bottom_k != other.bottom_k:
            raise ValueError("the states keep bottom lists of different lengths")
        if self.bottom_k:
            dev = self.values.device
            low = torch.cat([self.low_values, other.low_values.to(dev)], 1)
            low_ids = torch.cat([self.low_ids, other.low_ids.to(dev)], 1)
            order = _lexsort(-low, low_ids)[:, : self.bottom_k]
            self.low_values = torch.gather(low, 1, order)
            self.low_ids = torch.gather(low_ids, 1, order)
            self.low_ys = torch.gather(torch.cat([self.low_ys, other.low_ys.to(dev)], 1), 1, order)
            self.low_xs = torch.gather(torch.cat([self.low_xs, other.low_xs.to(dev)], 1), 1, order)
        if self.hist is None or other.hist is None:  # a state from before histograms existed
            self.hist = None
        else:
            self.hist += other.hist.to(self.hist.device)
        self.last_id = max(self.last_id, other.last_id)

    def _fold_moments(self, n, mean, m2) -> None:
        """Chan et al.'s pairwise update: (count, mean, m2) joined with a group of n values of
        mean `mean` and sum of squared deviations `m2` (a batch, or another state)."""
        if n == 0:
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + delta * delta * (self.count * n / total)

    _TENSORS = ("values", "ids", "ys", "xs", "mean", "m2", "silent", "positions", "class_sum", "class_count", "probe",
                "probe_filled", "low_values", "low_ids", "low_ys", "low_xs")

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {k: getattr(self, k).cpu().numpy() for k in self._TENSORS}
        if self.hist is not None:
            state["hist"] = self.hist.cpu().numpy()
        state["meta"] = np.array([self.channels, self.top_k, self.curve_len, self.n_classes, self.probe_size,
                                  self.count, self.last_id], dtype=np.int64)
        if self.has_spatial:
            state["class_mean_sum"] = self.class_mean_sum.cpu().numpy()
        return state

    @classmethod
    def from_state(cls, state: dict, device="cpu") -> "LayerStats":
        import torch

        C, k, curve, n_classes, probe, count, last_id = (int(v) for v in state["meta"])
        stats = cls(C, k, curve, n_classes, probe, device)
        for key in cls._TENSORS:
            if key in state:  # states written before bottom lists existed have none
                setattr(stats, key, torch.from_numpy(np.array(state[key])).to(device))
        if "sumsq" in state:  # written before the moments were Chan's: sums of values and of squares
            n = max(count, 1)
            total = torch.from_numpy(np.array(state["sum"], dtype=np.float64)).to(device)
            stats.mean = total / n
            stats.m2 = (torch.from_numpy(np.array(state["sumsq"], dtype=np.float64)).to(device) - total * stats.mean).clamp(min=0)
        stats.bottom_k = stats.low_values.shape[1]
        known = "hist" in state and np.shape(state["hist"]) == (C, HIST_BUCKETS)  # else: before histograms
        stats.hist = torch.from_numpy(np.array(state["hist"])).to(device) if known else None

        stats.count, stats.last_id = count, last_id
        if "class_mean_sum" in state:
            stats.class_mean_sum = torch.from_numpy(np.array(state["class_mean_sum"])).to(device)
            stats.has_spatial = True
        return stats

    # ------------------------------------------------------------------ results
    def result(self) -> UnitResults:
        values = self.values.cpu().numpy().astype(np.float64)
        n = max(self.count, 1)
        mean = self.mean.cpu().numpy()
        var = self.m2.cpu().numpy() / n
        act_max = np.where(np.isfinite(values[:, 0]), values[:, 0], np.nan)
        curve = values[:, : self.curve_len].copy()
        curve[~np.isfinite(curve)] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            curve = np.where(act_max[:, None] > 0, curve / act_max[:, None], 0.0)
        curve = np.clip(curve, 0.0, 1.0)
        if curve.shape[1] < self.curve_len:
            curve = np.pad(curve, ((0, 0), (0, self.curve_len - curve.shape[1])))
        class_count = self.class_count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            class_means = self.class_sum.cpu().numpy() / class_count[:, None]
            spatial = self.class_mean_sum.cpu().numpy() / class_count[:, None] if self.has_spatial else None
        k = self.top_k
        return UnitResults(
            count=self.count,
            act_max=act_max,
            act_mean=mean,
            act_std=np.sqrt(var),
            sparsity=self.silent.cpu().numpy() / np.maximum(self.positions.cpu().numpy(), 1),
            dead=~(act_max > 0),
            curve=curve.astype(np.float32),
            auc=curve.sum(1) / self.curve_len,
            class_means=class_means[: self.n_classes],
            class_means_spatial=spatial[: self.n_classes] if spatial is not None else None,
            class_count=class_count[: self.n_classes],
            top_values=values[:, :k],
            top_ids=self.ids.cpu().numpy()[:, :k],
            top_y=self.ys.cpu().numpy()[:, :k],
            top_x=self.xs.cpu().numpy()[:, :k],
            probe=self.probe.cpu().numpy()[self.probe_filled.cpu().numpy()],
            probe_ids=np.nonzero(self.probe_filled.cpu().numpy())[0],
            bottom_values=np.where(np.isfinite(low := self.low_values.cpu().numpy().astype(np.float64)), low, np.nan),
            bottom_ids=self.low_ids.cpu().numpy(),
            bottom_y=self.low_ys.cpu().numpy().astype(np.int64),
            bottom_x=self.low_xs.cpu().numpy().astype(np.int64),
            hist=self.hist.cpu().numpy() if self.hist is not None else None)


def hist_buckets(vals):
    """Bucket index (0 .. HIST_BUCKETS-1) of each value (a torch tensor, taken as float32).

    The bucket is read off the float's bits: exponent and first HIST_SUB mantissa bits, so
    bucket HIST_ZERO + 1 + p (p = 0 .. HIST_SIDE-1) holds 2^e (1 + j/8) <= v < 2^e (1 + (j+1)/8)
    with e = HIST_LOW + p // 8, j = p % 8 (6.25-12.5% wide), HIST_ZERO - 1 - p its mirror -v,
    HIST_ZERO exact zero (and NaN); magnitudes below 2^HIST_LOW (about 1e-6) or from 2^-HIST_LOW
    (about 1e6) up fall into the end buckets. Exact: no rounding decides a bucket."""
    import torch

    x = torch.nan_to_num(vals.float(), nan=0.0).contiguous()
    bits = x.view(torch.int32) & 0x7FFFFFFF
    p = ((bits >> (23 - HIST_SUB)) - ((127 + HIST_LOW) << HIST_SUB)).clamp_(0, HIST_SIDE - 1)
    return torch.sign(x).long() * (p + 1) + HIST_ZERO


def bucket_edges() -> np.ndarray:
    """(HIST_SIDE + 1,) the magnitudes bounding the positive buckets: bucket HIST_ZERO + 1 + p is
    [edges[p], edges[p + 1]) (the first and last also take what is clipped into them)."""
    p = np.arange(HIST_SIDE + 1)
    return np.ldexp(1.0 + (p % (1 << HIST_SUB)) / (1 << HIST_SUB), HIST_LOW + p // (1 << HIST_SUB))


def bucket_values() -> np.ndarray:
    """A representative value of every bucket: the geometric middle of its range (0 for zero), so
    any value of the bucket is within 6.1% of it."""
    e = bucket_edges()
    mid = np.sqrt(e[:-1] * e[1:])
    return np.concatenate([-mid[::-1], [0.0], mid])


def histogram(counts: np.ndarray, lo: float | None = None, hi: float | None = None, bins: int = 32) -> dict:
    """One unit's bucket counts (HIST_BUCKETS,) re-binned into `bins` equal bins from lo to hi
    (default: the range of its non-empty buckets; pass the exact extremes when known). Each bucket
    falls whole into the bin of its middle value, so a bin edge is exact to 6.1% of its value.
    Returns edges (bins + 1), counts (bins), n, density (share of values > 0), share_zero."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    mids = bucket_values()
    used = np.nonzero(counts)[0]
    if n == 0:
        return {"edges": [], "counts": [], "n": 0, "density": None, "share_zero": None}
    lo = float(mids[used[0]]) if lo is None or not np.isfinite(lo) else float(lo)
    hi = float(mids[used[-1]]) if hi is None or not np.isfinite(hi) else float(hi)
    lo = min(lo, 0.0) if counts[HIST_ZERO] else lo
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    edges = np.linspace(lo, hi, bins + 1)
    where = np.clip(np.searchsorted(edges, np.clip(mids[used], lo, hi), side="right") - 1, 0, bins - 1)
    out = np.bincount(where, weights=counts[used], minlength=bins).astype(np.int64)
    return {"edges": edges.tolist(), "counts": out.tolist(), "n": n,
            "density": float(counts[HIST_ZERO + 1:].sum() / n), "share_zero": float(counts[HIST_ZERO] / n)}


def _lexsort(values, ids):
    """Column order per row: value descending, then id ascending."""
    import torch

    by_id = torch.sort(ids, dim=1, stable=True).indices
    v = torch.gather(values, 1, by_id)
    by_val = torch.sort(v, dim=1, descending=True, stable=True).indices
    return torch.gather(by_id, 1, by_val)


# how a result's arrays are laid out: units on axis 1 (per class or probe image), not per unit,
# or units on axis 0 (every other key)
PER_CLASS = ("class_means", "class_means_spatial", "probe")  # (classes or probe images, units)
WHOLE = ("count", "class_count", "probe_ids", "pooled_var")  # not per unit (pooled_var: per direction)


@dataclass
class UnitResults:
    """Pass 1's results for a row of units (a layer's channels, then its directions): one entry
    per unit along the first axis, except the PER_CLASS arrays (units along the second axis)
    and the WHOLE values. What a step does not know stays None (a recompute from a stored index
    knows only the top lists, a_max and the dead flags)."""

    act_max: np.ndarray
    top_values: np.ndarray  # (units, k) best first; -inf where fewer images
    top_ids: np.ndarray  # (units, k) image positions; -1 where none
    top_y: np.ndarray
    top_x: np.ndarray
    dead: np.ndarray
    count: int = 0  # images seen
    act_mean: np.ndarray | None = None
    act_std: np.ndarray | None = None
    sparsity: np.ndarray | None = None
    curve: np.ndarray | None = None
    auc: np.ndarray | None = None
    class_means: np.ndarray | None = None
    class_means_spatial: np.ndarray | None = None
    class_count: np.ndarray | None = None
    probe: np.ndarray | None = None
    probe_ids: np.ndarray | None = None
    bottom_values: np.ndarray | None = None
    bottom_ids: np.ndarray | None = None
    bottom_y: np.ndarray | None = None
    bottom_x: np.ndarray | None = None
    hist: np.ndarray | None = None  # (units, HIST_BUCKETS) streamed log-bucket counts
    weak: np.ndarray | None = None
    kind: list | None = None  # per unit: channel, svd, random, user
    unit: list | None = None  # per unit: its name (the channel number, or the direction's name)
    act_min: np.ndarray | None = None  # directions: the lowest value of their map
    pooled_var: np.ndarray | None = None  # directions: variance of the pooled projection

    def __len__(self) -> int:
        return len(self.act_max)

    def units(self, index) -> "UnitResults":
        """These results restricted to some units (a slice or an array of unit indexes)."""
        part = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name in WHOLE:
                part[f.name] = value
            elif f.name in PER_CLASS:
                part[f.name] = np.asarray(value)[:, index]
            elif isinstance(value, list):
                part[f.name] = list(np.asarray(value, dtype=object)[index])
            else:
                part[f.name] = np.asarray(value)[index]
        return UnitResults(**part)


def units_of(result: UnitResults, index) -> UnitResults:
    return result.units(index)


def split(result: UnitResults, channels: list[int]) -> list[UnitResults]:
    """Per-layer results from the result of a combined LayerStats."""
    starts = np.concatenate([[0], np.cumsum(channels)]).astype(int)
    return [result.units(slice(a, b)) for a, b in zip(starts[:-1], starts[1:])]


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


class Moments:
    """Count, mean and sum of squared deviations of C columns, folded in by Chan et al.'s pairwise
    update (exact for batches and shards in any order; no cancellation of sum^2/n - mean^2)."""

    def __init__(self, columns: int):
        self.n = 0
        self.mean = np.zeros(columns)
        self.m2 = np.zeros(columns)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        if len(rows):
            mean = rows.mean(0)
            self.fold(len(rows), mean, ((rows - mean) ** 2).sum(0))

    def fold(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total

    def variance(self) -> np.ndarray:
        """The population variance (m2 / n; zeros before any row)."""
        return self.m2 / max(self.n, 1)


@dataclass
class Pass1State:
    """Everything pass 1 streams, composed: the unit statistics of the selected layers side by
    side (top and bottom lists, Chan moments, histograms, class sums, probe) and, when directions
    are asked for, the pooled channel covariance. One save (`state_dict`), load and merge."""

    stats: LayerStats
    cov: Covariance | None = None
    sample: object = None  # dictionaries.PositionSample when dictionaries are asked for

    def merge(self, other: "Pass1State") -> None:
        """Fold in a state over a disjoint set of images (a shard, a Ray task)."""
        if (self.cov is None) != (other.cov is None):
            raise ValueError("one state has the covariance for directions and the other not")
        if (self.sample is None) != (other.sample is None):
            raise ValueError("one state has the position sample for dictionaries and the other not")
        self.stats.merge(other.stats)
        if self.cov is not None:
            self.cov.merge(other.cov)
        if self.sample is not None:
            self.sample.merge(other.sample)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays for an .npz file: the statistics under "0/" (the prefix keeps the file format of
        earlier versions), the covariance under "cov/"."""
        state = {f"0/{k}": v for k, v in self.stats.state_dict().items()}
        if self.cov is not None:
            state.update({f"cov/{k}": v for k, v in self.cov.state_dict().items()})
        if self.sample is not None:
            state.update({f"sample/{k}": v for k, v in self.sample.state_dict().items()})
        return state

    @classmethod
    def from_state(cls, arrays, device="cpu") -> "Pass1State":
        """From `state_dict`'s arrays (a dict, or an open .npz)."""
        names = list(arrays.keys()) if hasattr(arrays, "keys") else list(arrays.files)
        groups = {k.split("/", 1)[0] for k in names if "/" in k}
        if groups - {"cov", "sample"} != {"0"}:
            raise ValueError("an older state format (one state per layer)")
        stats = LayerStats.from_state({k.split("/", 1)[1]: arrays[k] for k in names if k.startswith("0/")}, device)
        cov = {k.split("/", 1)[1]: arrays[k] for k in names if k.startswith("cov/")}
        sample = {k.split("/", 1)[1]: arrays[k] for k in names if k.startswith("sample/")}
        return cls(stats, Covariance.from_state(cov) if cov else None,
                   PositionSample.from_state(sample) if sample else None)
