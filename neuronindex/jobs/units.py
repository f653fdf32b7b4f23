"""The units pass: after pass 1 (whose covariance gives the SVD), one more pass over the images for
what pass 1 could not know, each direction's top and bottom lists with locations and its
statistics over its projection map; and the layer results with those units appended."""
from __future__ import annotations

from dataclasses import fields

import numpy as np
from tqdm import tqdm

from neuronindex.nets.extract import Extractor, image_batches
from neuronindex.nets.summaries import Summaries
from neuronindex.science.dictionaries import PositionSample
from neuronindex.science.directions import Projector
from neuronindex.science.stats import (
    PER_CLASS,
    WHOLE,
    LayerStats,
    Moments,
    UnitResults,
    split,
)


def units_pass(run, directions: list, progress: bool = True) -> list[UnitResults | None]:
    """One more pass over every image for what pass 1 could not know: each direction's top and
    bottom lists with locations and its statistics, as a neuron's, over its projection map.

    Returns, per layer, the direction units' UnitResults (as `LayerStats.result` gives them, with
    `bottom_*` from the negated maps, `act_min` and `pooled_var`), or None.
    """
    import torch

    p = run.params
    nodes = [s.layer.name for s in run.selections]
    sizes = [len(d) if d is not None else 0 for d in directions]
    positions = [q for q in run.positions() if q not in run.problems]
    if not sum(sizes) or not positions:
        return [None] * len(nodes)
    projector = Projector(nodes, directions)
    # the forward stops at the deepest layer with directions; taps project each map as it is made
    wanted = [n for n, s in zip(nodes, sizes) if s]
    extractor = Extractor(run.loaded, wanted, p.device, p.amp)
    unit_channels = [2 * s for s in sizes if s]
    stats = LayerStats(sum(unit_channels), p.top_k, p.curve_len, len(run.label_names), p.probe_size, p.device)
    moments = [Moments(s) for s in sizes]  # of each direction's pooled projection
    sink = ProjectionSink(projector, wanted, [d.pooling for d in directions if d is not None and len(d)],
                          [m for m, s in zip(moments, sizes) if s], p.device)
    extractor.use_sink(sink)
    label_index = {name: i for i, name in enumerate(run.label_names)}
    labels = torch.tensor([label_index.get(r.label, -1) if r.label is not None else -1 for r in run.images.images],
                          dtype=torch.long)
    bar = tqdm(total=len(positions), unit="img", desc="directions: projection maps", disable=not progress,
               dynamic_ncols=True)
    for batch, pos, problems in image_batches(run.images, run.loaded.preprocessing, p.batch_size, p.workers, positions):
        ok = torch.tensor([not q for q in problems], dtype=torch.bool)
        bar.update(len(problems))
        if not bool(ok.any()):
            continue
        sink.begin(int(ok.sum()))
        extractor.run_taps(batch[ok])
        pos = pos[ok]
        stats.add_summary(sink.result(), pos, labels[pos])
    bar.close()
    parts = split(stats.result(), unit_channels)
    out: list[dict | None] = []
    it = iter(parts)
    for li, s in enumerate(sizes):
        if not s:
            out.append(None)
            continue
        res, neg = split(next(it), [s, s])
        low = neg.top_values[:, : p.bottom_k]
        res.bottom_values = np.where(np.isfinite(low), -low, np.nan)
        res.bottom_ids = neg.top_ids[:, : p.bottom_k]
        res.bottom_y = neg.top_y[:, : p.bottom_k].astype(np.int64)
        res.bottom_x = neg.top_x[:, : p.bottom_k].astype(np.int64)
        res.act_min = -neg.act_max
        res.pooled_var = moments[li].variance()
        out.append(res)
    return out


class ProjectionSink:
    """The units pass's taps: each selected map (B, C, H, W) is projected on its layer's directions
    the moment it is made, and the maps (proj, -proj) are summarised side by side, layers in node
    order, with a threshold of -inf (every pair gets its location: a few units per layer); the
    pooled projections go to `moments`. As pass 1's `Summaries`, a selected ReLU is rectified here."""

    def __init__(self, projector, nodes: list[str], pooling: list[str], moments: list, device: str = "cpu"):
        self.projector, self.nodes, self.pooling, self.moments = projector, list(nodes), list(pooling), list(moments)
        self.device = device
        self.sizes = [int(projector.by_node[n][0].shape[0]) for n in self.nodes]
        self.inner = Summaries([2 * s for s in self.sizes])

    def begin(self, batch: int) -> None:
        import torch

        self.inner.begin(torch.full((2 * sum(self.sizes),), -float("inf"), device=self.device), batch)

    def add(self, i: int, a) -> None:
        node = self.nodes[i]
        pooled = (a.amax(dim=(2, 3)) if self.pooling[i] == "max" else a.mean(dim=(2, 3))).double()
        w, b0 = self.projector.by_node[node]
        self.moments[i].add((pooled @ w.to(pooled.device).double().T + b0.to(pooled.device).double()).cpu().numpy())
        self.inner.add(i, self.projector.project(node, a, (1, -1)).float().contiguous())

    def add_relu(self, i: int, x, inplace: bool = False):
        import torch

        y = x.relu_() if inplace else torch.relu(x)
        self.add(i, y)
        return y

    def result(self) -> tuple:
        return self.inner.result()


def sample_pass(run, spec, progress: bool = True):
    """One pass over the run's images for the position sample of its (first) layer's dictionaries:
    the sample pass 1 takes with --directions nmf,sae (the same images, positions and maps)."""
    import torch

    p = run.params
    positions = [q for q in run.positions() if q not in run.problems]
    nodes = [s.layer.name for s in run.selections]
    sample = PositionSample([s.layer.channels for s in run.selections], spec.samples, spec.positions)
    extractor = Extractor(run.loaded, nodes, p.device, p.amp)
    bar = tqdm(total=len(positions), unit="img", desc="dictionaries: sampling positions", disable=not progress,
               dynamic_ncols=True)
    for batch, pos, problems in image_batches(run.images, run.loaded.preprocessing, p.batch_size, p.workers, positions):
        ok = torch.tensor([not q for q in problems], dtype=torch.bool)
        bar.update(len(problems))
        if bool(ok.any()):
            maps = extractor(batch[ok])
            for i, node in enumerate(nodes):
                sample.take(i, maps[node], pos[ok].numpy())
    bar.close()
    return sample


def extend_results(results: list[UnitResults], units: list[UnitResults | None]) -> list[UnitResults]:
    """Each layer's results with its direction units appended after its channels."""
    out = []
    for res, u in zip(results, units):
        if u is None:
            out.append(res)
            continue
        merged = {}
        for f in fields(res):
            key, value, theirs = f.name, getattr(res, f.name), getattr(u, f.name)
            if key in PER_CLASS and value is not None and theirs is None:
                # what the units pass does not take (spatial means): NaN for the directions
                merged[key] = np.concatenate([value, np.full((value.shape[0], len(u)), np.nan)], axis=1)
            elif value is None or theirs is None or key in WHOLE:
                merged[key] = value
            elif key in PER_CLASS:
                merged[key] = np.concatenate([value, theirs], axis=1)
            elif isinstance(value, list):
                merged[key] = list(value) + list(theirs)
            else:
                a, b = np.asarray(value), np.asarray(theirs)
                if a.ndim == 2 and a.shape[1] != b.shape[1]:  # lists of different lengths
                    width = max(a.shape[1], b.shape[1])
                    a, b = _pad(a, width), _pad(b, width)
                merged[key] = np.concatenate([a, b], axis=0)
        merged["act_min"] = np.concatenate([np.full(len(res), np.nan), u.act_min])
        merged["pooled_var"] = u.pooled_var  # per direction
        out.append(UnitResults(**merged))
    return out


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    fill = {"f": -np.inf, "i": -1, "u": 0, "b": False}[a.dtype.kind]
    return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)
