"""Streaming per-neuron statistics of one layer: add(batch) / result() / state_dict() / merge().

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
Locations are computed only for (image, channel) pairs that enter a top list, as taking the
argmax everywhere costs several times a plain amax.
"""
from __future__ import annotations

import numpy as np

NO_IMAGE = np.iinfo(np.int64).max


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
        self.positions = 0
        self.sum = torch.zeros(C, dtype=torch.float64, device=dev)
        self.sumsq = torch.zeros(C, dtype=torch.float64, device=dev)
        self.silent = torch.zeros(C, dtype=torch.long, device=dev)
        self.class_sum = torch.zeros((max(n_classes, 1), C), dtype=torch.float64, device=dev)
        self.class_count = torch.zeros(max(n_classes, 1), dtype=torch.long, device=dev)
        self.probe = torch.zeros((probe_size, C), dtype=torch.float32, device=dev)
        self.probe_filled = torch.zeros(probe_size, dtype=torch.bool, device=dev)
        self.last_id = -1

    # ------------------------------------------------------------------ streaming
    def add(self, acts, ids, labels=None) -> None:
        """acts (B, C, H, W); ids (B,) image positions, increasing; labels (B,) class index or -1."""
        import torch

        if acts.shape[0] == 0:
            return
        B, C, H, W = acts.shape
        ids = ids.to(self.values.device)
        vals = acts.amax(dim=(2, 3))  # (B, C)
        self.count += B
        self.positions += B * H * W
        v64 = vals.double()
        self.sum += v64.sum(0)
        self.sumsq += (v64 * v64).sum(0)
        self.silent += (acts <= 0).sum(dim=(0, 2, 3))
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
        self._update_top(acts, vals, ids)

    def _update_top(self, acts, vals, ids) -> None:
        import torch

        ordered = bool(ids.min() > self.last_id) and bool((ids[1:] > ids[:-1]).all()) if len(ids) > 1 else bool(ids.min() > self.last_id)
        self.last_id = max(self.last_id, int(ids.max()))
        kth = self.values[:, -1]
        cand = vals.T >= kth[:, None]  # (C, B)
        if not bool(cand.any()):
            return
        B = vals.shape[0]
        C = self.channels
        new_vals = vals.T  # (C, B)
        new_ids = ids.view(1, B).expand(C, B)
        all_vals = torch.cat([self.values, new_vals], 1)
        all_ids = torch.cat([self.ids, new_ids], 1)
        batch_col = torch.cat([torch.full((C, self.length), -1, dtype=torch.long, device=vals.device),
                               torch.arange(B, device=vals.device).view(1, B).expand(C, B)], 1)
        all_ys = torch.cat([self.ys, torch.full((C, B), -1, dtype=torch.int32, device=vals.device)], 1)
        all_xs = torch.cat([self.xs, torch.full((C, B), -1, dtype=torch.int32, device=vals.device)], 1)
        if ordered:
            # existing entries have smaller ids than the batch, which is in id order: a stable
            # descending sort on value alone keeps ties in id order
            order = torch.sort(all_vals, dim=1, descending=True, stable=True).indices
        else:
            order = _lexsort(all_vals, all_ids)
        order = order[:, : self.length]
        self.values = torch.gather(all_vals, 1, order)
        self.ids = torch.gather(all_ids, 1, order)
        self.ys = torch.gather(all_ys, 1, order)
        self.xs = torch.gather(all_xs, 1, order)
        cols = torch.gather(batch_col, 1, order)
        need = (cols >= 0) & torch.isfinite(self.values)
        if bool(need.any()):
            ch, rank = need.nonzero(as_tuple=True)
            b = cols[ch, rank]
            maps = acts[b, ch].flatten(1)  # (n, H*W)
            where = maps.argmax(1)
            W = acts.shape[3]
            self.ys[ch, rank] = (where // W).int()
            self.xs[ch, rank] = (where % W).int()

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

    _TENSORS = ("values", "ids", "ys", "xs", "sum", "sumsq", "silent", "class_sum", "class_count", "probe", "probe_filled")

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {k: getattr(self, k).cpu().numpy() for k in self._TENSORS}
        state["meta"] = np.array([self.channels, self.top_k, self.curve_len, self.n_classes, self.probe_size,
                                  self.count, self.positions, self.last_id], dtype=np.int64)
        return state

    @classmethod
    def from_state(cls, state: dict, device="cpu") -> "LayerStats":
        import torch

        C, k, curve, n_classes, probe, count, positions, last_id = (int(v) for v in state["meta"])
        stats = cls(C, k, curve, n_classes, probe, device)
        for key in cls._TENSORS:
            setattr(stats, key, torch.from_numpy(np.array(state[key])).to(device))
        stats.count, stats.positions, stats.last_id = count, positions, last_id
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
            "sparsity": self.silent.cpu().numpy() / max(self.positions, 1),
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
