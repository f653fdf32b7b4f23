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
  - activations of the first `probe_size` images (the probe sample).
`summarize` reduces each map inside the model's graph (see extract.Extractor.summaries) while
it is still in cache: on the CPU one compiled pass takes the spatial maxima, their locations and
the firing counts together, writing each layer's part of one batch summary (`Summaries`).
Locations are kept only for (image, channel) pairs at or above the channel's current k-th value:
only those can enter a top list.

The CPU kernels (that pass and the top-list merge) come in two builds with equal results: native
(`neuronindex/_pass1.cpp`, compiled at install, run on torch's own OpenMP threads, so on every
core the forward uses) and numba (one thread each; used where the native build is absent, or with
NEURONINDEX_NATIVE=0).
"""
from __future__ import annotations

import os

import numba
import numpy as np

NO_IMAGE = np.iinfo(np.int64).max


def summarize(acts, threshold):
    """What the statistics need from one batch of one layer, computed while the map is hot.

    acts (B, C, H, W); threshold (C,): the channel's current k-th value. Returns
    (values (B, C) spatial maxima, firing (C,) count of positions > 0, loc (B, C) flat index of
    the first maximum for pairs with value >= threshold, -1 elsewhere, positions per image H * W,
    W). On the CPU one compiled pass over the map (in its own memory layout) takes all three
    (`summarize_into`); elsewhere torch reductions do (`summarize_torch`).
    """
    import torch

    if acts.device.type != "cpu" or acts.dtype != torch.float32 or acts.numel() == 0:
        return summarize_torch(acts, threshold)
    B, C, H, W = acts.shape
    values = np.empty((B, C), dtype=np.float32)
    loc = np.empty((B, C), dtype=np.int64)
    firing = np.zeros(C, dtype=np.float64)
    summarize_into(acts, threshold.float().numpy(), values, loc, firing)
    return torch.from_numpy(values), torch.from_numpy(firing), torch.from_numpy(loc), H * W, W


def native():
    """The native pass-1 kernels (`neuronindex._pass1`, built at install from _pass1.cpp), or None
    where they were not built, where they would not share torch's OpenMP runtime, or with
    NEURONINDEX_NATIVE=0; the numba kernels stand in for them."""
    global _native
    if _native is False:
        import torch  # noqa: F401 - torch's libgomp first, so the kernels run on torch's threads

        _native = None
        if os.environ.get("NEURONINDEX_NATIVE", "1") != "0":
            try:
                from . import _pass1 as module
            except ImportError:
                module = None
            runtimes = openmp_runtimes()
            if module is not None and len(runtimes) > 1:
                import sys

                print(f"warning: the native pass-1 kernels would run on a second OpenMP runtime ({', '.join(runtimes)}) "
                      "beside torch's; using the numba kernels (same results, slower pass 1). Rebuild neuronindex "
                      "against torch's libgomp to use them", file=sys.stderr)
                module = None
            _native = module
    return _native


def openmp_runtimes() -> list[str]:
    """The OpenMP runtime libraries mapped into this process (Linux; [] where that cannot be read).

    torch loads its own libgomp; the native kernels link `libgomp.so.1`, which the loader then
    resolves to that same library. Two runtimes would oversubscribe the cores with two thread pools."""
    import re

    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if re.search(r"/lib(g|i5|i)?omp[^/]*\.so", line)})
    except OSError:
        return []


_native = False


def _rows(a: np.ndarray, dtype, shape) -> int:
    """Row stride (in elements) of a 2-D array the native kernels may write, after checking it."""
    if a.dtype != dtype or a.shape != shape or a.strides[1] != a.itemsize or a.strides[0] % a.itemsize:
        raise ValueError(f"expected a row-major {np.dtype(dtype)} array of shape {shape}, got {a.dtype} {a.shape}")
    return a.strides[0] // a.itemsize


def _layout(acts) -> tuple:
    """(1, acts) for a channels-last map, else (0, its channels-first contiguous copy or itself):
    the layout argument and the tensor the native reduction reads."""
    import torch

    last = acts.is_contiguous(memory_format=torch.channels_last) and not acts.is_contiguous()
    return (1, acts) if last else (0, acts.contiguous())


def _reduce_native(lib, acts, bar, values, vstride, loc, lstride, firing, threads, out=None) -> None:
    """The native reduction of one float32 CPU map (B, C, H, W), given checked addresses: bar
    (C,) float32, the first of B rows of values (float32) and loc (int64), strides in elements,
    and firing (C,) float64; out: where to write relu(acts) first (acts' strides), or None."""
    last, x = _layout(acts)
    B, C, H, W = x.shape
    lib.reduce(last, x.data_ptr(), B, C, H * W, bar, values, vstride, loc, lstride, firing, threads,
               0 if out is None else out.data_ptr())


def summarize_into(acts, threshold, values, loc, firing) -> None:
    """`summarize` of a float32 CPU map written into numpy arrays (which may be column slices of
    larger ones): values (B, C) and loc (B, C) are set, firing (C,) is added to."""
    import torch

    B, C, H, W = acts.shape
    lib = native()
    if lib is not None:
        bar = np.ascontiguousarray(threshold, dtype=np.float32)
        if bar.shape != (C,) or firing.dtype != np.float64 or firing.shape != (C,) or firing.strides[0] != 8:
            raise ValueError(f"threshold and firing must have one entry per channel ({C})")
        vstride, lstride = _rows(values, np.float32, (B, C)), _rows(loc, np.int64, (B, C))
        _reduce_native(lib, acts, bar.ctypes.data, values.ctypes.data, vstride, loc.ctypes.data, lstride,
                       firing.ctypes.data, torch.get_num_threads())
        return
    if acts.is_contiguous(memory_format=torch.channels_last):
        x = acts.permute(0, 2, 3, 1).numpy().reshape(B, H * W, C)
        _reduce_channels_last(x, _fold(C, H * W, LANES), threshold, values, loc, firing)
    else:
        _reduce_channels_first(acts.contiguous().numpy().reshape(B, C, H * W), threshold, values, loc, firing)


# The kernels keep one running maximum, its position and a firing count per vector lane in small
# local arrays and update them with selects, which the compiler turns into vector instructions
# (about twice the speed of the branchy loop they replace); lanes are folded at the end, the
# earliest position winning ties so the location is the first maximum in row-major order.
LANES = 64


@numba.njit(cache=True, nogil=True)
def _reduce_channels_last(x, fold, threshold, values, loc, firing):  # pragma: no cover - compiled
    """x (B, P, C), read as rows of `fold` positions x C channels: per (b, c) the maximum over p
    and its first index (-1 below threshold[c]); per c the count of x > 0 added to firing."""
    B, P, C = x.shape
    K = fold * C
    rows = P // fold
    best = np.empty(K, dtype=np.float32)
    row_at = np.empty(K, dtype=np.int32)
    fired = np.empty(K, dtype=np.int32)
    for b in range(B):
        xb = x[b].reshape(rows, K)
        best[:] = -np.inf
        row_at[:] = 0
        fired[:] = 0
        for r in range(rows):
            row = xb[r]
            for j in range(K):
                v = row[j]
                better = v > best[j]
                best[j] = v if better else best[j]
                row_at[j] = np.int32(r) if better else row_at[j]
                fired[j] += np.int32(v > 0)
        for c in range(C):
            m, p, n = best[c], row_at[c] * fold, fired[c]
            for f in range(1, fold):
                j = f * C + c
                q = row_at[j] * fold + f
                if best[j] > m or (best[j] == m and q < p):
                    m, p = best[j], q
                n += fired[j]
            values[b, c] = m
            loc[b, c] = p if m >= threshold[c] else -1
            firing[c] += n


@numba.njit(cache=True, nogil=True)
def _reduce_channels_first(x, threshold, values, loc, firing):  # pragma: no cover - compiled
    """x (B, C, P): as `_reduce_channels_last`, each row read in chunks of K positions."""
    B, C, P = x.shape
    K = LANES if P >= 4 * LANES else min(16, P)  # short rows: fewer lanes to fold
    chunks = P // K
    best = np.empty(K, dtype=np.float32)
    at = np.empty(K, dtype=np.int32)
    fired = np.empty(K, dtype=np.int32)
    for b in range(B):
        for c in range(C):
            row = x[b, c]
            best[:] = -np.inf
            at[:] = 0
            fired[:] = 0
            for i in range(chunks):
                base = i * K
                for j in range(K):
                    v = row[base + j]
                    better = v > best[j]
                    best[j] = v if better else best[j]
                    at[j] = np.int32(base + j) if better else at[j]
                    fired[j] += np.int32(v > 0)
            m, p, n = best[0], at[0], fired[0]
            for j in range(1, K):
                if best[j] > m or (best[j] == m and at[j] < p):
                    m, p = best[j], at[j]
                n += fired[j]
            for q in range(chunks * K, P):  # the tail, after every chunked position
                v = row[q]
                if v > m:
                    m, p = v, q
                n += np.int32(v > 0)
            values[b, c] = m
            loc[b, c] = p if m >= threshold[c] else -1
            firing[c] += n


class Summaries:
    """One batch's summaries of several layers side by side (channels in layer order), the form
    `combine` gives and `LayerStats.add_summary` takes.

    On the CPU every layer's compiled pass writes straight into column slices of shared arrays,
    so a batch costs a handful of allocations whatever the number of layers; elsewhere each
    layer is summarised by torch and the parts are combined. A tapped ReLU goes through
    `add_relu`, which rectifies and summarises in one read where the native kernels are built.
    """

    def __init__(self, channels: list[int], compiled: bool | None = None):
        self.channels = list(channels)
        self.starts = np.concatenate([[0], np.cumsum(self.channels)]).astype(np.int64)
        self.force = compiled

    def begin(self, threshold, batch: int) -> None:
        """Start a batch of `batch` images; threshold (channels,) is the combined k-th value."""
        self.threshold = threshold
        self.compiled = threshold.device.type == "cpu" if self.force is None else self.force
        self.lib = None
        if not self.compiled:
            self.parts = [None] * len(self.channels)
        else:
            n = int(self.starts[-1])
            self.batch = batch
            self.bar = np.ascontiguousarray(threshold.float().numpy())
            if self.bar.shape != (n,):
                raise ValueError(f"the threshold has {self.bar.shape[0]} channels where {n} were expected")
            self.values = np.empty((batch, n), dtype=np.float32)
            self.loc = np.empty((batch, n), dtype=np.int64)
            self.firing = np.zeros(n, dtype=np.float64)
            self.per_image = np.zeros(n, dtype=np.int64)
            self.width = np.zeros(n, dtype=np.int64)
            self.lib = native()
            if self.lib is not None:
                # the native kernel writes layer i's columns from these addresses on; add() only
                # offsets them (the Python around 55 kernel calls is otherwise ~1% of a forward)
                import torch

                self.addresses = [a.__array_interface__["data"][0] for a in (self.bar, self.values, self.loc, self.firing)]
                self.threads = torch.get_num_threads()

    def add(self, i: int, acts) -> None:
        """Summarise layer i's map (B, C, H, W)."""
        if self._native(i, acts, None):
            return
        s, e = self.starts[i], self.starts[i + 1]
        if self.compiled:
            summarize_into(acts.float(), self.bar[s:e], self.values[:, s:e], self.loc[:, s:e], self.firing[s:e])
            self.per_image[s:e] = acts.shape[2] * acts.shape[3]
            self.width[s:e] = acts.shape[3]
        else:
            self.parts[i] = summarize_torch(acts, self.threshold[s:e])

    def add_relu(self, i: int, x, inplace: bool = False):
        """relu(x), summarised as layer i's map, and returned: the native kernel rectifies and
        summarises in one read of x (a ReLU's output is otherwise written, then read back).
        inplace: rectify x itself, as an in-place ReLU does, and return it."""
        import torch

        if self.lib is not None:
            last, dense = _layout(x)
            y = x if inplace else torch.empty_like(dense)  # the kernel writes y in x's memory order
            if (dense is x or not inplace) and y.stride() == dense.stride() and self._native(i, dense, y):
                return y
        y = x.relu_() if inplace else torch.relu(x)
        self.add(i, y)
        return y

    def _native(self, i: int, acts, out) -> bool:
        """Layer i's map summarised by the native kernel (rectified into `out` first, unless None);
        False where another path must do it."""
        import torch

        s, e = self.starts[i], self.starts[i + 1]
        B, C, H, W = acts.shape
        if C != e - s:
            raise ValueError(f"layer {i} has {C} channels where {e - s} were expected")
        if not (self.lib is not None and acts.dtype == torch.float32 and acts.device.type == "cpu"
                and B == self.batch):
            return False
        bar, values, loc, firing = self.addresses
        n = self.values.shape[1]
        _reduce_native(self.lib, acts, bar + 4 * s, values + 4 * s, n, loc + 8 * s, n, firing + 8 * s, self.threads, out)
        self.per_image[s:e] = H * W
        self.width[s:e] = W
        return True

    def result(self) -> tuple:
        import torch

        if self.compiled:
            return tuple(torch.from_numpy(a) for a in (self.values, self.firing, self.loc, self.per_image, self.width))
        return combine(self.parts)


def summarize_torch(acts, threshold):
    """`summarize` by torch reductions (any device, any float dtype).

    Taking the argmax of every map costs several times an amax, so only pairs that can still
    enter a top list get one.
    """
    import torch

    B, C, H, W = acts.shape
    # sign() then a float sum: several times faster than reducing a boolean mask; float32 counts
    # are exact below 2**24 positions per channel, float64 beyond
    wide = B * H * W >= 2 ** 24
    if C > 1 and acts.is_contiguous(memory_format=torch.channels_last):
        # channels innermost (an image given as HWC makes every map channels-last): reduce over
        # rows of k * C values, so that few channels still fill the vector lanes, then fold k
        rows = acts.permute(0, 2, 3, 1)  # (B, H, W, C), contiguous
        k = _fold(C, H * W)
        values = rows.reshape(B, H * W // k, k * C).amax(1).view(B, k, C).amax(1)
        signs = torch.sign(rows.reshape(-1, k * C)).clamp_(min=0)
        firing = signs.sum(0, dtype=torch.float64 if wide else None).view(k, C).sum(0)
    else:
        values = acts.amax(dim=(2, 3))
        firing = torch.sign(acts).clamp_(min=0).sum(dim=(0, 2, 3), dtype=torch.float64 if wide else None)
    loc = torch.full((B, C), -1, dtype=torch.long, device=acts.device)
    cand = values >= threshold.to(values.device)
    if bool(cand.any()):
        b, c = cand.nonzero(as_tuple=True)
        loc[b, c] = acts[b, c].flatten(1).argmax(1)
    return values, firing, loc, H * W, W


def _fold(channels: int, positions: int, lanes: int = 64) -> int:
    """How many positions to lay side by side so a row holds about `lanes` values."""
    k = 1
    while k * 2 * channels <= lanes and positions % (k * 2) == 0:
        k *= 2
    return k


@numba.njit(cache=True, nogil=True)
def _merge_top(values, ids, ys, xs, vals, loc, image_ids, width):  # pragma: no cover - compiled
    """Per channel c, merge the batch's candidates (loc[b, c] >= 0) into the top list
    (values, ids, ys, xs)[c], kept ordered by value descending, then image id ascending.

    vals, loc (B, C); image_ids (B,); width (C,) map widths (loc is the flat index y * W + x).
    A candidate that cannot beat the list's last entry is skipped; the rest are sorted by
    insertion (few once the lists fill) and merged in place from the back, so the entries above
    the best candidate are never touched.
    """
    C, L = values.shape
    B = vals.shape[0]
    # gather each channel's candidates reading loc row by row (it is (B, C): walking a channel
    # down the batch touches a cache line per image); a count, then a fill
    start = np.zeros(C + 1, dtype=np.int64)
    for b in range(B):
        for c in range(C):
            start[c + 1] += loc[b, c] >= 0
    for c in range(C):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    rows = np.empty(start[C], dtype=np.int64)
    for b in range(B):
        for c in range(C):
            if loc[b, c] >= 0:
                rows[fill[c]] = b
                fill[c] += 1
    cv = np.empty(B, dtype=values.dtype)
    ci = np.empty(B, dtype=np.int64)
    cb = np.empty(B, dtype=np.int64)
    for c in range(C):
        last_v, last_i = values[c, L - 1], ids[c, L - 1]
        m = 0
        for n in range(start[c], start[c + 1]):
            b = rows[n]
            v, i = vals[b, c], image_ids[b]
            if v < last_v or (v == last_v and i > last_i):
                continue
            k = m
            while k > 0 and (cv[k - 1] < v or (cv[k - 1] == v and ci[k - 1] > i)):
                cv[k], ci[k], cb[k] = cv[k - 1], ci[k - 1], cb[k - 1]
                k -= 1
            cv[k], ci[k], cb[k] = v, i, b
            m += 1
        # L + m entries in all: drop the m worst, then write from position L - 1 upwards
        old, new = L - 1, m - 1
        for _ in range(m):
            if new >= 0 and (old < 0 or cv[new] < values[c, old] or (cv[new] == values[c, old] and ci[new] > ids[c, old])):
                new -= 1
            else:
                old -= 1
        w = L - 1
        while new >= 0:
            if old >= 0 and (values[c, old] < cv[new] or (values[c, old] == cv[new] and ids[c, old] > ci[new])):
                values[c, w], ids[c, w], ys[c, w], xs[c, w] = values[c, old], ids[c, old], ys[c, old], xs[c, old]
                old -= 1
            else:
                at = loc[cb[new], c]
                values[c, w], ids[c, w], ys[c, w], xs[c, w] = cv[new], ci[new], at // width[c], at % width[c]
                new -= 1
            w -= 1


class LayerStats:
    def __init__(self, channels: int, top_k: int = 100, curve_len: int = 400, n_classes: int = 0,
                 probe_size: int = 2048, device="cpu"):
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
        self.sum = torch.zeros(C, dtype=torch.float64, device=dev)
        self.sumsq = torch.zeros(C, dtype=torch.float64, device=dev)
        self.silent = torch.zeros(C, dtype=torch.long, device=dev)
        self.class_sum = torch.zeros((max(n_classes, 1), C), dtype=torch.float64, device=dev)
        self.class_count = torch.zeros(max(n_classes, 1), dtype=torch.long, device=dev)
        self.probe = torch.zeros((probe_size, C), dtype=torch.float32, device=dev)
        self.probe_filled = torch.zeros(probe_size, dtype=torch.bool, device=dev)
        self.last_id = -1

    # ------------------------------------------------------------------ streaming
    def threshold(self):
        """The k-th value per channel: a pair below it cannot enter the top list."""
        return self.values[:, -1]

    def add(self, acts, ids, labels=None) -> None:
        """acts (B, C, H, W); ids (B,) image positions, increasing; labels (B,) class index or -1."""
        if acts.shape[0] == 0:
            return
        self.add_summary(summarize(acts, self.threshold()), ids, labels)

    def add_summary(self, summary, ids, labels=None) -> None:
        """Fold in one batch summarised by `summarize` (with this object's threshold)."""
        import torch

        vals, firing, loc, per_image, width = summary  # per_image, width: int or (C,) tensors
        B = vals.shape[0]
        if B == 0:
            return
        ids = ids.to(self.values.device)
        self.count += B
        self.positions += B * per_image
        v64 = vals.double()
        self.sum += v64.sum(0)
        self.sumsq += (v64 * v64).sum(0)
        self.silent += (B * per_image - firing.round().long())
        if labels is not None and self.n_classes:
            labels = labels.to(vals.device)
            known = labels >= 0
            if known.any():
                self.class_sum.index_add_(0, labels[known], v64[known])
                self.class_count += torch.bincount(labels[known], minlength=self.class_sum.shape[0])
        in_probe = ids < self.probe_size
        if in_probe.any():
            self.probe[ids[in_probe]] = vals[in_probe]
            self.probe_filled[ids[in_probe]] = True
        self._update_top(vals, loc, width, ids)

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
        lib = native()
        if lib is None or not all(a.flags.c_contiguous for a in lists):
            return _merge_top(*lists, *batch)
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

        self.count += other.count
        self.positions += other.positions
        self.sum += other.sum.to(self.sum.device)
        self.sumsq += other.sumsq.to(self.sum.device)
        self.silent += other.silent.to(self.sum.device)
        self.class_sum += other.class_sum.to(self.sum.device)
        self.class_count += other.class_count.to(self.sum.device)
        filled = other.probe_filled.to(self.sum.device)
        self.probe[filled] = other.probe.to(self.sum.device)[filled]
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
        self.last_id = max(self.last_id, other.last_id)

    _TENSORS = ("values", "ids", "ys", "xs", "sum", "sumsq", "silent", "positions", "class_sum", "class_count", "probe",
                "probe_filled")

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {k: getattr(self, k).cpu().numpy() for k in self._TENSORS}
        state["meta"] = np.array([self.channels, self.top_k, self.curve_len, self.n_classes, self.probe_size,
                                  self.count, self.last_id], dtype=np.int64)
        return state

    @classmethod
    def from_state(cls, state: dict, device="cpu") -> "LayerStats":
        import torch

        C, k, curve, n_classes, probe, count, last_id = (int(v) for v in state["meta"])
        stats = cls(C, k, curve, n_classes, probe, device)
        for key in cls._TENSORS:
            setattr(stats, key, torch.from_numpy(np.array(state[key])).to(device))
        stats.count, stats.last_id = count, last_id
        return stats

    # ------------------------------------------------------------------ results
    def result(self) -> dict[str, np.ndarray]:
        values = self.values.cpu().numpy().astype(np.float64)
        n = max(self.count, 1)
        mean = self.sum.cpu().numpy() / n
        var = np.maximum(self.sumsq.cpu().numpy() / n - mean ** 2, 0.0)
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
        k = self.top_k
        return {
            "count": self.count,
            "act_max": act_max,
            "act_mean": mean,
            "act_std": np.sqrt(var),
            "sparsity": self.silent.cpu().numpy() / np.maximum(self.positions.cpu().numpy(), 1),
            "dead": ~(act_max > 0),
            "curve": curve.astype(np.float32),
            "auc": curve.sum(1) / self.curve_len,
            "class_means": class_means[: self.n_classes],
            "class_count": class_count[: self.n_classes],
            "top_values": values[:, :k],
            "top_ids": self.ids.cpu().numpy()[:, :k],
            "top_y": self.ys.cpu().numpy()[:, :k],
            "top_x": self.xs.cpu().numpy()[:, :k],
            "probe": self.probe.cpu().numpy()[self.probe_filled.cpu().numpy()],
            "probe_ids": np.nonzero(self.probe_filled.cpu().numpy())[0],
        }


def _lexsort(values, ids):
    """Column order per row: value descending, then id ascending."""
    import torch

    by_id = torch.sort(ids, dim=1, stable=True).indices
    v = torch.gather(values, 1, by_id)
    by_val = torch.sort(v, dim=1, descending=True, stable=True).indices
    return torch.gather(by_id, 1, by_val)


def combine(summaries: list) -> tuple:
    """One summary over the channels of several layers (concatenated in order)."""
    import torch

    vals = torch.cat([s[0] for s in summaries], 1)
    firing = torch.cat([s[1].double() for s in summaries])
    loc = torch.cat([s[2] for s in summaries], 1)
    per_image = torch.cat([torch.full((s[0].shape[1],), s[3], dtype=torch.long, device=vals.device) for s in summaries])
    width = torch.cat([torch.full((s[0].shape[1],), s[4], dtype=torch.long, device=vals.device) for s in summaries])
    return vals, firing, loc, per_image, width


def split(result: dict, channels: list[int]) -> list[dict]:
    """Per-layer results from the result of a combined LayerStats."""
    out = []
    start = 0
    for c in channels:
        part = {}
        for key, value in result.items():
            if key in ("class_means", "probe"):
                part[key] = value[:, start:start + c]
            elif key in ("count", "class_count", "probe_ids"):
                part[key] = value
            else:
                part[key] = value[start:start + c]
        out.append(part)
        start += c
    return out
