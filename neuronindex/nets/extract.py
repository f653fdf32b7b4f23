"""Capture layer outputs: the one place that sets eval mode, inference mode and the device.

`Extractor(loaded, nodes)` builds a torch.fx feature extractor returning only the requested
nodes; torchvision prunes every node after the deepest one, so the model is truncated for
free. Pass 1 does not take maps back: `Extractor.summaries` runs a copy of the graph with a tap
after each selected node (`nets.taps`). TorchScript models (no hooks, no fx) are
tapped by graph surgery: see layers.ScriptTaps. `image_batches` streams
(uint8 images as the model sees them, positions, problems) from a DataLoader whose workers
decode in parallel with the forward pass.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Iterator

import numpy as np

from neuronindex.data import GeometricDataset
from neuronindex.errors import UsageError
from neuronindex.nets.layers import ScriptTaps, without_inplace
from neuronindex.nets.summaries import Summaries
from neuronindex.nets.taps import (
    PointTap,
    ReluSummaryTap,
    ScriptTapped,
    SummaryTap,
    relu_input,
    tapped,
)


class Extractor:
    def __init__(self, loaded, nodes: list[str], device: str = "cpu", amp: bool = False, projector=None):
        """projector (directions.Projector): each map it knows comes back with its direction maps
        appended after the channels (a direction is a unit whose map is a projection)."""
        import torch

        self.loaded = loaded
        self.projector = projector if projector else None
        self.nodes = list(nodes)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():

            raise UsageError("--device cuda was asked for but CUDA is not available; use --device cpu")
        self.amp = amp and self.device.type == "cuda"
        self._taps = None
        self._sink = None
        self._gather = None
        self._redirected = None
        if loaded.scripted:

            self.module = ScriptTaps(loaded.module.to(self.device).eval())
        else:
            from torchvision.models.feature_extraction import create_feature_extractor

            module = without_inplace(loaded.module)
            self.module = create_feature_extractor(module, return_nodes={n: n for n in self.nodes}).to(self.device).eval()

    def summaries(self, images_uint8, threshold, channels: list[int], spatial_means: bool = False,
                  low_threshold=None, sample=None, image_ids=None) -> tuple:
        """One batch summarised for `stats.LayerStats.add_summary`, by taps inside the graph.

        Each selected node is followed by a tap that reduces its map right away (the map is still
        in cache) into a shared `summaries.Summaries`, and the maps themselves are not returned, so
        the forward can reuse their memory. threshold (sum(channels),): every layer's current
        k-th value per channel, layers side by side in node order; channels: per node (fixed by
        the first call; a map of another width raises). spatial_means: also take each map's
        spatial mean per (image, channel), then read with `spatial_means()`. low_threshold: the
        bottom lists' k-th lowest values; pairs at or below get their location (`low_locations()`).
        sample (dictionaries.PositionSample, fixed by the first call): offered every map with
        `image_ids` (B,), the batch's image positions.
        """
        if self._taps is None:
            self.use_sink(Summaries(channels, spatial_means=spatial_means, sample=sample))
        self._sink.begin(threshold, images_uint8.shape[0], low_threshold, image_ids)
        self.run_taps(images_uint8)
        return self._sink.result()

    def use_sink(self, sink) -> None:
        """Tap every selected node into `sink` (once): its `add(i, map)`, and for a selected ReLU
        its `add_relu(i, input, inplace)`, which must return the rectified map (`Summaries` is one;
        the units pass has another)."""
        self._sink = sink
        self._taps = self._tapped_module(sink)

    def run_taps(self, images_uint8) -> None:
        """One batch through the tapped graph (`use_sink` first): the taps see every map, none is returned."""
        import torch

        with torch.inference_mode():
            x = self.loaded.preprocessing.normalize(images_uint8.to(self.device, non_blocking=True))
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                self._taps(x)

    def low_locations(self):
        """(B, C) locations of the last `summaries` batch's bottom candidates (-1 elsewhere), or None."""
        return self._sink.low_locations() if self._sink is not None else None

    def spatial_means(self):
        """(B, C) float64 spatial means of the last `summaries` batch, or None when not taken."""
        return self._sink.means if self._sink is not None else None

    def _tapped_module(self, sink):
        """The extractor with a tap after every selected node, each feeding its map to `sink`; a
        selected ReLU is replaced by a tap that rectifies and summarises in one read of its input."""
        if self.loaded.scripted:
            return ScriptTapped(self.module, self.nodes, [SummaryTap(i, sink) for i in range(len(self.nodes))])
        return tapped(self.loaded.module, self.nodes, self.device,
                      lambda i, relu, inplace: ReluSummaryTap(i, sink, inplace) if relu else SummaryTap(i, sink),
                      fuse_relu=True)

    def gather(self, images_uint8, points: dict) -> dict:
        """{node: (b, y, x) int64 index tensors} -> {node: (n, C [+ D]) float tensor}: each point's
        vector over the layer's channels (then its directions, see directions.Projector).

        Taps inside the graph take the points as each map is made, so no map is kept or returned
        (SqueezeNet's nine maps are 1.1 GB for 64 images) and in-place activations stay in place.
        Nodes without points cost nothing but their forward."""
        import torch

        if self._gather is None:
            wanted: dict = {}
            taken: dict = {}
            if self.loaded.scripted:
                module = ScriptTapped(self.module, self.nodes,
                                      [PointTap(i, wanted, taken) for i in range(len(self.nodes))])
            else:
                module = tapped(self.loaded.module, self.nodes, self.device,
                                lambda i, relu, inplace: PointTap(i, wanted, taken), fuse_relu=False)
            self._gather = (module, wanted, taken)
        module, wanted, taken = self._gather
        index = {n: i for i, n in enumerate(self.nodes)}
        wanted.update({index[n]: tuple(t.to(self.device) for t in at) for n, at in points.items()})
        try:
            with torch.inference_mode():
                x = self.loaded.preprocessing.normalize(images_uint8.to(self.device, non_blocking=True))
                with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                    module(x)
            out = {n: taken[index[n]] for n in points}
        finally:
            wanted.clear()
            taken.clear()
        if self.projector is not None:
            out = {n: self.projector.extend_vectors(n, v) for n, v in out.items()}
        return out

    def __call__(self, images_uint8) -> dict:
        """uint8 (B, H, W, 3) tensor -> {node: activation tensor (B, C, H', W')} on the device."""
        import torch

        with torch.inference_mode():
            x = self.loaded.preprocessing.normalize(images_uint8.to(self.device, non_blocking=True))
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                out = self.module(x)
            return self._maps(out)

    def _maps(self, out) -> dict:
        maps = {n: out[n].float() for n in self.nodes}
        return self.projector.extend(maps) if self.projector is not None else maps

    def differentiable(self, x01) -> dict:
        """Float images (B, 3, H, W) RGB in [0, 1] -> {node: activation} with autograd to the input
        (the weights stay fixed): for optimising images (science/optvis). No directions appended.

        Every ReLU of the graph passes its gradient by `redirected_relu`: the values are ReLU's, and
        so is the gradient wherever it reaches an image at all."""
        if self._redirected is None:
            self._redirected = redirect_relus(self.module) if not self.loaded.scripted else self.module
        x = self.loaded.preprocessing.normalize_float(x01.to(self.device))
        out = self._redirected(x)
        return {n: out[n] for n in self.nodes}

    def forward_normalized(self, x) -> dict:
        """Already-normalised float input (B, 3, H, W) -> {node: activation}."""
        import torch

        with torch.inference_mode():
            x = x.to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                out = self.module(x)
            return self._maps(out)


def redirected_relu(x):
    """ReLU whose gradient does not die with the unit (Olah et al. 2017's "redirected ReLU", as
    feature-visualisation tools use it): for an image whose ordinary ReLU gradient is zero
    everywhere (every unit below zero, as a grey start leaves many), the gradient passes through
    the negative units too, except where it would push them further down. Values are relu(x)."""
    return _redirected_relu_function().apply(x)


def _redirected_backward(x, g):
    import torch

    plain = torch.where(x > 0, g, torch.zeros_like(g))
    # a loss gradient g > 0 at a negative unit would lower it further: keep those at zero
    redirected = torch.where((x <= 0) & (g > 0), torch.zeros_like(g), g)
    live = plain.flatten(1).abs().amax(1) > 0 if g.dim() > 1 else (plain.abs().amax() > 0).view(1)
    return torch.where(live.view(-1, *([1] * (g.dim() - 1))), plain, redirected)


def _redirected_relu_function():
    return relu_function("RedirectedReLU", _redirected_backward)


@functools.lru_cache(maxsize=None)
def relu_function(name: str, backward):
    """An autograd Function computing relu(x) whose backward is backward(x, g) (the redirected
    ReLU here, the deconvnet and guided rules in query/pictures.py)."""
    import torch

    class RuleReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return backward(x, g)

    RuleReLU.__name__ = RuleReLU.__qualname__ = name
    return RuleReLU


def redirect_relus(module, relu=None):
    """A copy of an fx GraphModule whose ReLUs (modules, torch.relu, F.relu, Tensor.relu) are
    `relu` (default `redirected_relu`; pictures.py gives the deconvnet rules); values unchanged."""

    # a deep copy of a GraphModule comes back in training mode (BatchNorm on batch statistics), and
    # torchvision's extractor swaps graphs on train()/eval(): set eval mode before the surgery
    gm = copy.deepcopy(module).eval()
    graph = gm.graph
    for node in list(graph.nodes):
        source, _ = relu_input(gm, node)
        if source is None:
            continue
        with graph.inserting_after(node):
            new = graph.call_function(relu or redirected_relu, (source,))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm


def _collate(batch):
    import torch

    arrays, positions, problems = zip(*batch)
    return torch.from_numpy(np.stack(arrays)), torch.tensor(positions, dtype=torch.long), list(problems)


def image_batches(images, preprocessing, batch_size: int = 64, workers: int = 0,
                  positions: list[int] | None = None) -> Iterator:
    """Yield (uint8 (B,H,W,3), positions (B,), problems [str]) in position order."""
    from torch.utils.data import DataLoader, Subset

    dataset = GeometricDataset(images, preprocessing)
    if positions is not None:
        dataset = Subset(dataset, positions)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate, persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    yield from loader


def predict(loaded, images, batch_size: int = 128, workers: int = 0, device: str = "cpu") -> np.ndarray:
    """Class index predicted for every image (the model's own output)."""
    import torch

    module = loaded.module.to(device).eval()
    out = []
    with torch.inference_mode():
        for batch, _, _ in image_batches(images, loaded.preprocessing, batch_size, workers):
            logits = module(loaded.preprocessing.normalize(batch.to(device)))
            out.append(logits.argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
