"""Taps: modules put into a network's fx graph right after a selected node, so a layer's map is
used the moment it is made and never returned (its memory is reused by the rest of the forward).

  SummaryTap   reduces the map into a `summaries.Summaries` (pass 1: top lists, statistics)
  ReluSummaryTap  replaces a selected ReLU: rectifies and reduces in one read of its input
  PointTap     takes the vectors at given (image, y, x) points (pass 2: patch vectors)
  tapped(...)  a copy of a network's feature extractor with a tap after every selected node

`nets.extract.Extractor` builds its pass-1 and pass-2 forwards from these; pictures and
activation maximisation use the ReLU rules of `nets.extract` (`relu_function`, `redirect_relus`).
TorchScript models have no fx graph: `ScriptTapped` runs them whole and feeds the taps after.
"""
from __future__ import annotations

import copy
import warnings


class SummaryTap:
    """After selected node `index`: its map goes to `sink.add(index, map)`; nothing flows on."""

    def __init__(self, index: int, sink):
        self.index, self.sink = index, sink

    def __call__(self, x):
        self.sink.add(self.index, x)


class ReluSummaryTap(SummaryTap):
    """In place of a selected ReLU: rectifies and summarises in one read of the ReLU's input
    (`Summaries.add_relu`); torch.relu's exact values flow on to the ReLU's users."""

    def __init__(self, index: int, sink, inplace: bool):
        super().__init__(index, sink)
        self.inplace = inplace

    def __call__(self, x):
        return self.sink.add_relu(self.index, x, self.inplace)


class PointTap:
    """After selected node `index`: when `points[index]` holds (b, y, x) index tensors, the
    vectors x[b, :, y, x] go to `taken[index]` (float); otherwise nothing is done."""

    def __init__(self, index: int, points: dict, taken: dict):
        self.index, self.points, self.taken = index, points, taken

    def __call__(self, x):
        at = self.points.get(self.index)
        if at is not None:
            self.taken[self.index] = x[at[0], :, at[1], at[2]].float()


def run_tap(x, tap):
    """What the graph calls after a selected node: the tap (an attribute of the graph module)."""
    return tap(x)


def tapped(module, nodes: list[str], device, make_tap, fuse_relu: bool):
    """A copy of `module`'s feature extractor over `nodes` with `make_tap(i, relu, inplace)` after
    selected node i, whose maps are not returned. With fuse_relu, a selected ReLU is replaced by
    its tap (relu=True), which must return the rectified map.

    Built from the model as it is, in-place activations included: a tap runs right after its
    node, before anything can modify that value in place, so the out-of-place copies that
    returned maps need (10% of resnet18's forward) are not needed here. torchvision's extractor
    swaps graphs on train()/eval(), so eval mode is set before the surgery. A tap is a plain object
    held by the graph module and called through `run_tap` (a torch.fx.GraphModule results)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = copy.deepcopy(module)  # its own parameters
    gm = create_feature_extractor(model, return_nodes={n: n for n in nodes}).to(device).eval()
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    wanted = dict(output.args[0])
    # the maps are not returned (their memory is reused); fx runs a node with no users anyway
    output.args = ({name: None for name in nodes},)
    for i, name in enumerate(nodes):
        node, tap = wanted[name], f"_neuronindex_tap_{i}"
        source, inplace = relu_input(gm, node) if fuse_relu else (None, False)
        setattr(gm, tap, make_tap(i, source is not None, inplace))
        with graph.inserting_after(node), warnings.catch_warnings():
            # a tap is neither a module nor a tensor: fx says so, and calls it all the same
            warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
            held = graph.get_attr(tap)
        with graph.inserting_after(held):
            fused = graph.call_function(run_tap, (node if source is None else source, held))
        if source is not None:  # the rectified map flows on to the ReLU's users
            node.replace_all_uses_with(fused)
            graph.erase_node(node)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not reference an nn.Module")
        graph.lint()
    gm.recompile()
    return gm


class ScriptTapped:
    """A TorchScript network (no fx graph) run whole, each selected node's map then given to its
    tap: the same interface as `tapped`'s graph, without the memory saving."""

    def __init__(self, module, nodes: list[str], taps: list):
        self.module, self.nodes, self.taps = module, list(nodes), list(taps)

    def __call__(self, x):
        out = self.module(x)
        for n, tap in zip(self.nodes, self.taps):
            tap(out[n])


def relu_input(gm, node) -> tuple:
    """(input, in place) of `node` when it is a ReLU of one tensor (an nn.ReLU module, torch.relu,
    F.relu or Tensor.relu), which a tap can replace, rectifying that input in place or not as the
    ReLU did; else (None, False)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if len(node.args) != 1 or set(node.kwargs) - {"inplace"} or not hasattr(node.args[0], "users"):
        return None, False
    inplace = bool(node.kwargs.get("inplace"))
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        relu, inplace = type(module) is nn.ReLU, inplace or getattr(module, "inplace", False)
    else:
        relu = (node.op == "call_function" and node.target in (torch.relu, F.relu)) or \
            (node.op == "call_method" and node.target == "relu")
    return (node.args[0], inplace) if relu else (None, False)
