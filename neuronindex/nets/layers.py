"""Selectable layers of a model: names, readable aliases, output shapes, receptive fields.

Tracing uses torchvision's feature extraction (torch.fx): every graph node whose output is a
4-D tensor is a selectable layer, named as torchvision names it (`layer1.0.conv1`,
`layer1.0.add`, ...); a container module name (`layer1`, `features`) selects the last node
inside it. Aliases follow the papers: `conv1 .. convN` for convolutions in forward order, and for
plain chains of convolutions and pools also VGG-style `conv4_3` / `pool4` (shown as the alias). An alias names the
convolution's *rectified* output: the conv, through BatchNorm and a residual addition when they
follow directly, up to and including the first ReLU (Caffe-style `conv1_1` blobs are rectified
in place too). TorchScript models cannot be traced by torch.fx and take no hooks: their layers are the
outputs of their top-level submodule calls (see ScriptTaps) and have no receptive field.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

from neuronindex.errors import LayerError, did_you_mean
from neuronindex.nets.receptive import Field, propagate

RELU_NAMES = {"ReLU", "ReLU6", "LeakyReLU", "ELU", "GELU", "SiLU", "Hardswish", "PReLU", "relu", "relu_", "gelu", "silu"}
NORM_NAMES = {"BatchNorm2d", "GroupNorm", "InstanceNorm2d", "LocalResponseNorm"}
ADD_TARGETS = {"add", "iadd"}
# between a convolution and its activation in timm's fused norm-act modules (traced as functions)
PASS_THROUGH = {"batch_norm", "group_norm", "Identity", "Dropout", "dropout"}
ALL_CONV = "all-conv"


@dataclass
class Layer:
    name: str  # fx node name (or module name when hooked)
    kind: str
    position: int
    channels: int
    map_h: int
    map_w: int
    field: Field | None
    alias: str | None = None
    modules: list[str] = field(default_factory=list)  # container modules ending at this node
    field_note: str | None = None  # why there is no receptive field (the operation that stopped it)
    extra_aliases: list[str] = field(default_factory=list)  # conv1..convN beside VGG-style conv4_3
    pre_activation: str | None = None  # a rectified layer: the node before its ReLU (negative values kept)

    @property
    def aliases(self) -> list[str]:
        return ([self.alias] if self.alias else []) + self.extra_aliases

    @property
    def rf_size(self):
        return self.field.size() if self.field is not None else None

    @property
    def rf_stride(self):
        return int(self.field.stride[0]) if self.field is not None else None

    @property
    def rf_offset(self):
        return self.field.offset() if self.field is not None else None

    def row(self) -> dict:
        return {
            "name": self.name, "alias": self.alias, "kind": self.kind, "position": self.position,
            "channels": self.channels, "map_h": self.map_h, "map_w": self.map_w,
            "rf_size": self.rf_size, "rf_stride": self.rf_stride, "rf_offset": self.rf_offset,
            "modules": ",".join(self.modules), "aliases": ",".join(self.aliases), "rf_note": self.field_note,
            "pre_activation": self.pre_activation,
        }


@dataclass
class Selection:
    """One layer chosen for ingest: the name it was chosen by and the node it records."""

    name: str
    layer: Layer


class ModelGraph:
    def __init__(self, layers: list[Layer], traced: bool):
        self.layers = layers
        self.traced = traced
        self.by_name = {l.name: l for l in layers}
        self.by_alias = {l.alias: l for l in layers if l.alias}
        # conv1..convN of plain chains: after node and module names, which they must not shadow
        self.by_extra = {a: l for l in layers for a in l.extra_aliases}
        self.by_module = {m: l for l in layers for m in l.modules}

    def names(self) -> list[str]:
        return list(self.by_alias) + list(self.by_extra) + list(self.by_module) + list(self.by_name)

    def lookup(self, name: str) -> Layer:
        for table in (self.by_alias, self.by_name, self.by_module, self.by_extra):
            if name in table:
                return table[name]
        raise LayerError(f"unknown layer {name!r}{did_you_mean(name, self.names())}; "
                         "list them with `neuronindex layers MODEL`")

    def select(self, spec: str | list[str]) -> list[Selection]:
        """Resolve `conv1,layer2`, `all-conv` or a list of names; duplicates of a node dropped."""
        names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
        if not names:
            raise LayerError("no layers selected; pass --layers NAME[,NAME...] or all-conv")
        out: list[Selection] = []
        seen: set[str] = set()
        for name in names:
            if name == ALL_CONV:
                picks = [Selection(l.alias, l) for l in self.layers if l.alias and l.alias.startswith("conv")]
                if not picks:
                    raise LayerError("this model has no convolution layers to select with all-conv")
            else:
                picks = [Selection(name, self.lookup(name))]
            for p in picks:
                if p.layer.name not in seen:
                    seen.add(p.layer.name)
                    out.append(p)
        return sorted(out, key=lambda s: s.layer.position)


def _kind(node, modules) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _is_add(node) -> bool:
    if node.op == "call_function":
        return node.target in (operator.add, operator.iadd) or getattr(node.target, "__name__", "") in ADD_TARGETS
    return node.op == "call_method" and node.target in ADD_TARGETS


def trace(loaded, input_size: tuple[int, int] | None = None) -> ModelGraph:
    """List the selectable layers of a LoadedModel, with shapes and receptive fields."""
    size = tuple(input_size or loaded.preprocessing.input_size)
    if loaded.scripted:
        return _hooked(loaded.module, size)
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    module = without_inplace(loaded.module)
    try:
        _, names = get_graph_node_names(module)
        gm = create_feature_extractor(module, return_nodes={n: n for n in names})
    except Exception as exc:  # fx cannot trace data-dependent control flow
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise LayerError(f"cannot trace the model with torch.fx ({first[:160]}); "
                         "export it with torch.jit.script and use torchscript:PATH") from None
    qual = {node.name: q for q, node in _output_nodes(gm).items()}
    shapes = _shapes(gm, size)
    reasons: dict[str, str] = {}
    fields = propagate(gm, shapes, reasons)
    modules = dict(gm.named_modules())
    layers: list[Layer] = []
    for position, node in enumerate(gm.graph.nodes):
        shape = shapes.get(node.name)
        if node.op in ("placeholder", "output", "get_attr") or shape is None or len(shape) != 4 or node.name not in qual:
            continue
        layers.append(Layer(qual[node.name], _kind(node, modules), position, int(shape[1]), int(shape[2]),
                            int(shape[3]), fields.get(node.name), field_note=reasons.get(node.name)))
    _assign_modules(layers, module)
    _assign_aliases(gm, layers, qual, modules)
    return ModelGraph(layers, traced=True)


def without_inplace(module):
    """A copy whose in-place activations are out-of-place, so recorded tensors keep their values."""
    if not any(getattr(m, "inplace", False) for m in module.modules()):
        return module
    clone = copy.deepcopy(module)
    for m in clone.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    return clone


def _output_nodes(gm) -> dict:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return dict(out.args[0])


def _shapes(gm, size) -> dict[str, tuple]:
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    x = torch.zeros(1, 3, *size)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
    except RuntimeError as exc:
        raise LayerError(f"the model does not accept a {size[0]}x{size[1]} input ({str(exc).splitlines()[0][:160]}); "
                         "set --input-size H W") from None
    shapes = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            shapes[node.name] = tuple(meta.shape)
    return shapes


def _assign_modules(layers: list[Layer], module) -> None:
    """Container modules (`layer1`, `layer1.0`, `features`) select their last node."""
    names = [l.name for l in layers]
    for mname, sub in module.named_modules():
        if not mname or not list(sub.children()):
            continue
        inside = [l for l in layers if l.name.startswith(mname + ".")]
        if inside and mname not in names:
            inside[-1].modules.append(mname)


def stored_names(row: dict) -> set[str]:
    """The names a stored layer (a `layers` row) answers to: its name, its fx node and every alias."""
    return {row["name"], row["node"], *(row.get("aliases") or "").split(",")} - {"", None}


def _assign_aliases(gm, layers: list[Layer], qual: dict, modules: dict) -> None:
    by_qual = {l.name: l for l in layers}
    nodes = [n for n in gm.graph.nodes if n.name in qual and qual[n.name] in by_qual]
    pools = {"MaxPool2d", "AvgPool2d", "max_pool2d", "avg_pool2d"}
    merges = [n for n in nodes if len([a for a in n.all_input_nodes if a.name in qual]) > 1]
    chain = not merges
    block, index, count, pool_count = 1, 0, 0, 0
    for node in nodes:
        kind = _kind(node, modules)
        if kind in ("Conv2d", "conv2d"):
            count += 1
            index += 1
            alias = f"conv{block}_{index}" if chain else f"conv{count}"
            target = _rectified(node, modules, qual)
            layer = by_qual[qual[target.name]]
            if target is not node:  # rectified: the ReLU's input holds the negative values too
                before = [a for a in target.all_input_nodes if a.name in qual and qual[a.name] in by_qual]
                if before and layer.pre_activation is None:
                    layer.pre_activation = qual[before[0].name]
            if layer.alias is None:
                layer.alias = alias
                if chain:  # conv1..convN in forward order work on every model
                    layer.extra_aliases.append(f"conv{count}")
        elif kind in pools:
            pool_count += 1
            layer = by_qual[qual[node.name]]
            if layer.alias is None:
                layer.alias = f"pool{block}" if chain else f"pool{pool_count}"
            if chain and index:
                block, index = block + 1, 0


def _rectified(conv, modules, qual):
    """Follow conv -> BatchNorm -> (+ residual) -> ReLU while each step has one consumer."""
    node = conv
    while True:
        users = [u for u in node.users if u.op != "output" and u.name in qual]
        if len(users) != 1:
            return conv
        nxt = users[0]
        kind = _kind(nxt, modules)
        if kind in RELU_NAMES:
            return nxt
        if kind in NORM_NAMES or kind in PASS_THROUGH or _is_add(nxt):
            node = nxt
            continue
        return conv


class ScriptTaps:
    """Outputs of every top-level submodule call of a TorchScript model, by module name.

    Hooks are not supported on ScriptModules, so a copy of the forward graph is made that
    returns those intermediate values too, and compiled into a function called with the module.
    """

    def __init__(self, module):
        import torch

        graph = module.forward.graph.copy()
        taps: dict[str, object] = {}
        for node in graph.nodes():
            if node.kind() == "prim::CallMethod" and node.inputsAt(0).node().kind() == "prim::GetAttr":
                name = node.inputsAt(0).node().s("name")
                key, i = name, 1
                while key in taps:
                    key, i = f"{name}_{i}", i + 1
                taps[key] = node.output()
        if not taps:
            raise LayerError("this TorchScript model calls no submodules; there are no layers to select")
        ret = graph.return_node()
        result = list(ret.inputs())
        for _ in result:
            graph.eraseOutput(0)
        tup = graph.insertNode(graph.create("prim::TupleConstruct", result + list(taps.values())))
        tup.moveBefore(ret)
        tup.output().setType(torch._C.TupleType([v.type() for v in tup.inputs()]))
        graph.registerOutput(tup.output())
        self.names = list(taps)
        self.skip = len(result)
        self.module = module
        self.function = torch._C._create_function_from_graph("neuronindex_taps", graph)

    def __call__(self, x) -> dict:
        out = self.function(self.module._c, x)
        return dict(zip(self.names, out[self.skip:]))


def _hooked(module, size) -> ModelGraph:
    """Layers of an untraceable (TorchScript) model: its top-level submodules with 4-D outputs."""
    import torch

    taps = ScriptTaps(module)
    with torch.no_grad():
        outs = taps(torch.zeros(1, 3, *size))
    order = [n for n, v in outs.items() if isinstance(v, torch.Tensor) and v.dim() == 4]
    if not order:
        raise LayerError("no layer of this TorchScript model outputs a feature map (B, C, H, W)")
    layers = [Layer(n, "module", i, *(int(d) for d in outs[n].shape[1:]), None) for i, n in enumerate(order)]
    count = 0
    for l in layers:
        if "conv" in l.name.lower():
            count += 1
            l.alias = f"conv{count}"
    return ModelGraph(layers, traced=False)
