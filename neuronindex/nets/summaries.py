"""Per-batch summaries of layer maps: spatial maxima, their locations and firing counts.

`summarize` (one layer) and `Summaries` (several layers side by side, written inside the model's
graph while each map is in cache) produce what `stats.LayerStats.add_summary` takes; on the CPU
through the compiled kernels (`kernels`), elsewhere through torch reductions (`summarize_torch`).
"""
from __future__ import annotations

import numpy as np

from neuronindex.nets import kernels


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


def summarize_into(acts, threshold, values, loc, firing) -> None:
    """`summarize` of a float32 CPU map written into numpy arrays (which may be column slices of
    larger ones): values (B, C) and loc (B, C) are set, firing (C,) is added to."""
    import torch

    B, C, H, W = acts.shape
    lib = kernels.native()
    if lib is not None:
        bar = np.ascontiguousarray(threshold, dtype=np.float32)
        if bar.shape != (C,) or firing.dtype != np.float64 or firing.shape != (C,) or firing.strides[0] != 8:
            raise ValueError(f"threshold and firing must have one entry per channel ({C})")
        vstride, lstride = kernels.row_stride(values, np.float32, (B, C)), kernels.row_stride(loc, np.int64, (B, C))
        kernels.reduce_native(lib, acts, bar.ctypes.data, values.ctypes.data, vstride, loc.ctypes.data, lstride,
                       firing.ctypes.data, torch.get_num_threads())
        return
    if acts.is_contiguous(memory_format=torch.channels_last):
        x = acts.permute(0, 2, 3, 1).numpy().reshape(B, H * W, C)
        kernels.reduce_channels_last(x, kernels.lane_fold(C, H * W, kernels.LANES), threshold, values, loc, firing)
    else:
        kernels.reduce_channels_first(acts.contiguous().numpy().reshape(B, C, H * W), threshold, values, loc, firing)


class Summaries:
    """One batch's summaries of several layers side by side (channels in layer order), the form
    `combine` gives and `LayerStats.add_summary` takes.

    On the CPU every layer's compiled pass writes straight into column slices of shared arrays,
    so a batch costs a handful of allocations whatever the number of layers; elsewhere each
    layer is summarised by torch and the parts are combined. A tapped ReLU goes through
    `add_relu`, which rectifies and summarises in one read where the native kernels are built.
    """

    def __init__(self, channels: list[int], compiled: bool | None = None, spatial_means: bool = False,
                 sample=None):
        """sample (dictionaries.PositionSample): also offered every map with the batch's image ids
        (`begin(..., image_ids=)`), for the dictionaries' position sample."""
        self.channels = list(channels)
        self.sample = sample
        self.image_ids = None
        self.starts = np.concatenate([[0], np.cumsum(self.channels)]).astype(np.int64)
        self.force = compiled
        # also each map's spatial mean per (image, channel), for the CSI of Morcos et al.: one more
        # read of every map, so only when asked for
        self.spatial_means = spatial_means
        self.means = None

    def begin(self, threshold, batch: int, low_threshold=None, image_ids=None) -> None:
        """Start a batch of `batch` images; threshold (channels,) is the combined k-th value;
        low_threshold (channels,), if given, the k-th lowest value of the bottom lists: pairs at or
        below it get the location of their maximum too (`low_locations`)."""
        import torch

        self.threshold = threshold
        self.image_ids = image_ids
        self.low_bar = None if low_threshold is None else low_threshold.float().cpu().numpy()
        self.low_loc = None if low_threshold is None else np.full((batch, int(self.starts[-1])), -1, dtype=np.int64)
        self.compiled = threshold.device.type == "cpu" if self.force is None else self.force
        self.lib = None
        if self.spatial_means:

            self.means = torch.empty((batch, int(self.starts[-1])), dtype=torch.float64, device=threshold.device)
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
            self.lib = kernels.native()
            if self.lib is not None:
                # the native kernel writes layer i's columns from these addresses on; add() only
                # offsets them (the Python around 55 kernel calls is otherwise ~1% of a forward)

                self.addresses = [a.__array_interface__["data"][0] for a in (self.bar, self.values, self.loc, self.firing)]
                self.threads = torch.get_num_threads()

    def add(self, i: int, acts) -> None:
        """Summarise layer i's map (B, C, H, W)."""
        self._mean(i, acts)
        self._sample(i, acts)
        if self._native(i, acts, None):
            self._low(i, acts)
            return
        s, e = self.starts[i], self.starts[i + 1]
        if self.compiled:
            summarize_into(acts.float(), self.bar[s:e], self.values[:, s:e], self.loc[:, s:e], self.firing[s:e])
            self.per_image[s:e] = acts.shape[2] * acts.shape[3]
            self.width[s:e] = acts.shape[3]
        else:
            self.parts[i] = summarize_torch(acts, self.threshold[s:e])
        self._low(i, acts)

    def _low(self, i: int, acts) -> None:
        """Locations (first maximum) of the pairs that can enter a bottom list: values at or below
        the channel's k-th lowest. Few once the lists fill, so a gather and an argmax of those maps
        only, while the map is still at hand."""
        import torch

        if self.low_bar is None:
            return

        s, e = self.starts[i], self.starts[i + 1]
        values = self.values[:, s:e] if self.compiled else self.parts[i][0].float().cpu().numpy()
        b, c = np.nonzero(values <= self.low_bar[s:e])
        if len(b):
            picked = acts[torch.from_numpy(b).to(acts.device), torch.from_numpy(c).to(acts.device)]
            self.low_loc[b, s + c] = picked.reshape(len(b), -1).argmax(1).cpu().numpy()

    def low_locations(self):
        """(B, channels) flat location of the maximum for pairs that can enter a bottom list, -1 elsewhere."""
        import torch

        return None if self.low_loc is None else torch.from_numpy(self.low_loc)

    def add_relu(self, i: int, x, inplace: bool = False):
        """relu(x), summarised as layer i's map, and returned: the native kernel rectifies and
        summarises in one read of x (a ReLU's output is otherwise written, then read back).
        inplace: rectify x itself, as an in-place ReLU does, and return it."""
        import torch

        if self.lib is not None:
            last, dense = kernels.map_layout(x)
            y = x if inplace else torch.empty_like(dense)  # the kernel writes y in x's memory order
            if (dense is x or not inplace) and y.stride() == dense.stride() and self._native(i, dense, y):
                self._mean(i, y)
                self._sample(i, y)
                self._low(i, y)
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
        kernels.reduce_native(self.lib, acts, bar + 4 * s, values + 4 * s, n, loc + 8 * s, n, firing + 8 * s, self.threads, out)
        self.per_image[s:e] = H * W
        self.width[s:e] = W
        return True

    def _sample(self, i: int, acts) -> None:
        if self.sample is not None and self.image_ids is not None:
            self.sample.take(i, acts, self.image_ids)

    def _mean(self, i: int, acts) -> None:
        if self.means is not None:
            s, e = self.starts[i], self.starts[i + 1]
            self.means[:, s:e] = acts.mean(dim=(2, 3))  # float32 sums: exact to ~1e-7 relative

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
        k = kernels.lane_fold(C, H * W)
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


def combine(summaries: list) -> tuple:
    """One summary over the channels of several layers (concatenated in order)."""
    import torch

    vals = torch.cat([s[0] for s in summaries], 1)
    firing = torch.cat([s[1].double() for s in summaries])
    loc = torch.cat([s[2] for s in summaries], 1)
    per_image = torch.cat([torch.full((s[0].shape[1],), s[3], dtype=torch.long, device=vals.device) for s in summaries])
    width = torch.cat([torch.full((s[0].shape[1],), s[4], dtype=torch.long, device=vals.device) for s in summaries])
    return vals, firing, loc, per_image, width
