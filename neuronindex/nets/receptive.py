"""Receptive fields per channel: size, stride and offset, and unit (y, x) -> input box.

A field is kept per channel and per axis as a half-open interval [start, end) in input pixels
for unit (0, 0), plus a stride per axis; unit (y, x) covers
[y * stride_h + start_h, y * stride_h + end_h) x [x * stride_w + start_w, x * stride_w + end_w).
Boxes may extend past the image border (negative start, end beyond the size).

Propagation walks a torch.fx graph in order: convolutions and pools grow the field; element-wise
merges (ResNet additions) take the union over inputs channel by channel; concatenation keeps each
channel's own field (Inception / Fire branches differ in size); slicing and padding shift it.
An operation that changes the spatial size and is not understood gives `None` (unknown) from that
node on, rather than a wrong number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Field:
    start: np.ndarray  # (C, 2) float, axis order (h, w); +inf for channels that see nothing
    end: np.ndarray  # (C, 2)
    stride: np.ndarray  # (2,)

    @classmethod
    def input(cls, channels: int) -> "Field":
        return cls(np.zeros((channels, 2)), np.ones((channels, 2)), np.ones(2))

    @property
    def channels(self) -> int:
        return self.start.shape[0]

    def sizes(self) -> np.ndarray:
        """(C, 2) sizes; 0 for channels with no support (e.g. zero-padded channels)."""
        return np.where(np.isfinite(self.start), self.end - self.start, 0)

    def size(self) -> int:
        return int(self.sizes().max()) if self.channels else 0

    def largest_channel(self) -> int:
        return int(self.sizes().max(axis=1).argmax())

    def offset(self) -> int:
        c = self.largest_channel()
        return int(self.start[c, 0])

    def boxes(self, channels, ys, xs) -> np.ndarray:
        """(N, 4) int64 boxes (x0, y0, x1, y1), half-open, in input pixels, of units (ys, xs) of
        `channels`: the one place that turns a unit into an input box. A channel that sees no
        input (a zero-padded shortcut channel) gets an empty box at the unit's corner."""
        channels, ys, xs = (np.asarray(a, dtype=np.int64) for a in (channels, ys, xs))
        sh, sw = self.stride
        seen = np.isfinite(self.start[channels]).all(axis=1)
        start = np.where(seen[:, None], self.start[channels], 0.0)
        end = np.where(seen[:, None], self.end[channels], 0.0)
        out = np.stack([xs * sw + start[:, 1], ys * sh + start[:, 0], xs * sw + end[:, 1], ys * sh + end[:, 0]], 1)
        return out.astype(np.int64)

    def box(self, channel: int, y: int, x: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), half-open, in input pixels (see `boxes`)."""
        return tuple(int(v) for v in self.boxes([channel], [y], [x])[0])

    def rows(self, index) -> "Field":
        """The field of some channels only (a slice or an array of indexes)."""
        return Field(self.start[index], self.end[index], self.stride.copy())

    def union_all(self) -> "Field":
        """Every channel sees the union of all channels (an operation mixing channels)."""
        s = np.full_like(self.start, self.start.min(axis=0))
        e = np.full_like(self.end, self.end.max(axis=0))
        return Field(s, e, self.stride.copy())

    def spatial(self, kernel, stride, padding, dilation=(1, 1)) -> "Field":
        """A sliding window (conv or pool) applied on top of this field."""
        k = np.array([dilation[i] * (kernel[i] - 1) + 1 for i in range(2)], dtype=float)
        p = np.array(padding, dtype=float)
        start = self.start - p * self.stride
        end = self.end + (k - 1 - p) * self.stride
        return Field(start, end, self.stride * np.array(stride, dtype=float))


def union(fields: list["Field"], channels: int) -> "Field | None":
    """Element-wise merge (add, mul, ...) of inputs with broadcastable channels."""
    if any(f is None for f in fields) or not fields:
        return None
    stride = np.maximum.reduce([f.stride for f in fields])
    start = np.full((channels, 2), math.inf)
    end = np.full((channels, 2), -math.inf)
    for f in fields:
        if f.channels == channels:
            fs, fe = f.start, f.end
        elif f.channels == 1:
            fs, fe = np.repeat(f.start, channels, 0), np.repeat(f.end, channels, 0)
        else:
            u = f.union_all()
            fs, fe = u.start[:1].repeat(channels, 0), u.end[:1].repeat(channels, 0)
        start, end = np.minimum(start, fs), np.maximum(end, fe)
    return Field(start, end, stride)


def _pair(v):
    if isinstance(v, (tuple, list)):
        return tuple(int(x) for x in v) if len(v) == 2 else (int(v[0]),) * 2
    return (int(v), int(v))


def _conv(field: Field, out_channels: int, kernel, stride, padding, dilation, groups: int) -> Field:
    """A convolution (module or F.conv2d): each output channel sees the union of its group's inputs."""
    kernel, stride, dilation = _pair(kernel), _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        padding = (0, 0) if padding == "valid" else tuple((dilation[i] * (kernel[i] - 1)) // 2 for i in range(2))
    else:
        padding = _pair(padding)
    cin, cout = field.channels, out_channels
    per_in, per_out = cin // groups, cout // groups
    start = np.empty((cout, 2))
    end = np.empty((cout, 2))
    for g in range(groups):
        s = field.start[g * per_in:(g + 1) * per_in].min(axis=0)
        e = field.end[g * per_in:(g + 1) * per_in].max(axis=0)
        start[g * per_out:(g + 1) * per_out] = s
        end[g * per_out:(g + 1) * per_out] = e
    return Field(start, end, field.stride.copy()).spatial(kernel, stride, padding, dilation)


def _pool(field: Field, kernel, stride, padding, dilation=1) -> Field:
    kernel = _pair(kernel)
    stride = _pair(stride if stride not in (None, [], ()) else kernel)
    return field.spatial(kernel, stride, _pair(padding), _pair(dilation))


def _adaptive(field: Field, in_hw, out_size) -> Field:
    out = _pair(out_size if out_size is not None else in_hw)
    out = tuple(o if o is not None else i for o, i in zip(out, in_hw))
    kernel = tuple(math.ceil(i / o) for i, o in zip(in_hw, out))
    stride = tuple(max(1, i // o) for i, o in zip(in_hw, out))
    return field.spatial(kernel, stride, (0, 0))


def _getitem(field: Field, index, shape) -> "Field | None":
    if not isinstance(index, tuple):
        index = (index,)
    if any(i is Ellipsis for i in index) or len(index) > 4:
        return None
    index = tuple(index) + (slice(None),) * (4 - len(index))
    if not isinstance(index[0], slice) or any(not isinstance(i, slice) for i in index[1:]):
        return None
    keep = np.arange(field.channels)[index[1]]
    start, end = field.start[keep].copy(), field.end[keep].copy()
    stride = field.stride.copy()
    for axis, sl in ((0, index[2]), (1, index[3])):
        first, _, step = sl.indices(int(shape[2 + axis]))
        start[:, axis] += first * stride[axis]
        end[:, axis] += first * stride[axis]
        stride[axis] *= step
    return Field(start, end, stride)


def _pad(field: Field, pad) -> "Field | None":
    pad = list(pad) + [0] * (6 - len(pad))
    left, _right, top, _bottom, front, back = (int(v) for v in pad[:6])
    start, end = field.start.copy(), field.end.copy()
    start[:, 1] -= left * field.stride[1]
    end[:, 1] -= left * field.stride[1]
    start[:, 0] -= top * field.stride[0]
    end[:, 0] -= top * field.stride[0]
    empty_s = np.full((1, 2), math.inf)
    empty_e = np.full((1, 2), -math.inf)
    start = np.concatenate([empty_s.repeat(front, 0), start, empty_s.repeat(back, 0)])
    end = np.concatenate([empty_e.repeat(front, 0), end, empty_e.repeat(back, 0)])
    return Field(start, end, field.stride.copy())


def _arg(node, i, name, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


# Operations that act on each spatial position alone (element-wise, or mixing channels at one
# position): the output unit sees what its inputs' units at the same place see.
POINTWISE_MODULES = {
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm2d", "FrozenBatchNorm2d",
    "GroupNorm", "InstanceNorm2d", "LayerNorm", "LocalResponseNorm", "CrossMapLRN2d",
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Hardswish",
    "Hardsigmoid", "Hardtanh", "Sigmoid", "Tanh", "Softplus", "Softsign", "Tanhshrink", "Threshold", "LogSigmoid",
    "Softmax2d", "Identity", "Dropout", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
}
POINTWISE_NAMES = {
    "add", "iadd", "sub", "isub", "mul", "imul", "truediv", "itruediv", "div", "neg", "pos", "abs", "exp", "log",
    "pow", "sqrt", "rsqrt", "reciprocal", "clamp", "clamp_", "clip", "maximum", "minimum", "where", "sign",
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "mish", "hardswish", "hardswish_", "hardsigmoid",
    "hardsigmoid_", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "tanh", "tanh_", "leaky_relu", "leaky_relu_",
    "elu", "elu_", "selu", "celu", "softplus", "prelu", "threshold", "logsigmoid",
    "batch_norm", "group_norm", "instance_norm", "layer_norm", "local_response_norm", "dropout", "dropout2d",
    "alpha_dropout", "feature_alpha_dropout", "contiguous", "to", "float", "half", "double", "type", "type_as",
    "clone", "detach", "add_", "mul_", "sub_", "div_", "masked_fill", "nan_to_num",
}
# Operations that reduce the map to 1 x 1 (global pooling, squeeze-and-excitation means).
GLOBAL_REDUCTIONS = {"mean", "amax", "sum", "max", "adaptive_avg_pool2d", "adaptive_max_pool2d", "AdaptiveAvgPool2d",
                     "AdaptiveMaxPool2d"}
POOL_FUNCTIONS = {"max_pool2d", "avg_pool2d", "max_pool2d_with_indices", "lp_pool2d"}


def _op_name(node, modules) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def propagate(gm, shapes: dict[str, tuple], reasons: dict[str, str] | None = None) -> dict[str, Field | None]:
    """Field for every node of a traced GraphModule whose output is a 4-D tensor.

    `shapes` maps node name -> output shape (from a shape-propagation run). A node whose spatial
    effect is not understood gets None, and so does everything computed from it; `reasons`, when
    given, receives for each such node the operation that stopped the propagation.
    """
    import torch.nn as nn

    reasons = reasons if reasons is not None else {}
    modules = dict(gm.named_modules())
    fields: dict[str, Field | None] = {}

    def unknown(node, why: str):
        reasons[node.name] = why
        return None

    for node in gm.graph.nodes:
        shape = shapes.get(node.name)
        if node.op == "placeholder":
            if shape is not None and len(shape) == 4:
                fields[node.name] = Field.input(int(shape[1]))
            continue
        if shape is None or len(shape) != 4 or node.op == "get_attr":
            continue  # parameters (F.conv2d weights) are not maps
        args = [a for a in node.all_input_nodes if a.name in fields]
        src = fields.get(node.args[0].name) if node.args and hasattr(node.args[0], "name") else None
        first = node.args[0] if node.args and hasattr(node.args[0], "name") else None
        inherited = next((reasons[a.name] for a in args if fields[a.name] is None and a.name in reasons), None)
        name = _op_name(node, modules)
        result: Field | None = None
        pointwise = name in POINTWISE_MODULES or name in POINTWISE_NAMES
        if first is not None and first.name in fields and src is None and not pointwise:
            result = unknown(node, inherited or f"{name} at node {node.name} has an input without a receptive field")
        elif node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            mod = modules[node.target]
            result = _conv(src, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.groups)
        elif node.op == "call_module" and isinstance(modules[node.target], (nn.MaxPool2d, nn.AvgPool2d)):
            mod = modules[node.target]
            result = _pool(src, mod.kernel_size, mod.stride, mod.padding, getattr(mod, "dilation", 1))
        elif node.op == "call_module" and isinstance(modules[node.target], (nn.ZeroPad2d, nn.ConstantPad2d,
                                                                              nn.ReflectionPad2d, nn.ReplicationPad2d)):
            pad = modules[node.target].padding
            result = _pad(src, list(pad) if isinstance(pad, (tuple, list)) else [pad] * 4)
        elif name in ("conv2d",) and node.op == "call_function":
            weight = _arg(node, 1, "weight")
            wshape = shapes.get(getattr(weight, "name", None))
            if wshape is None or len(wshape) != 4:
                result = unknown(node, f"conv2d at node {node.name}: the weight's shape is unknown")
            else:
                result = _conv(src, int(wshape[0]), tuple(wshape[2:]), _arg(node, 3, "stride", 1),
                               _arg(node, 4, "padding", 0), _arg(node, 5, "dilation", 1), int(_arg(node, 6, "groups", 1)))
        elif name in POOL_FUNCTIONS and node.op == "call_function":
            kernel = _arg(node, 1, "kernel_size")
            stride = _arg(node, 2, "stride", None) or kernel
            dilation = _arg(node, 4, "dilation", 1) if name != "avg_pool2d" else 1
            result = _pool(src, kernel, stride, _arg(node, 3, "padding", 0), dilation)
        elif name in GLOBAL_REDUCTIONS and tuple(shape[2:]) == (1, 1):
            result = _adaptive(src, tuple(shapes[first.name][2:]), (1, 1))
        elif name in GLOBAL_REDUCTIONS and tuple(shape[2:]) == tuple(shapes[first.name][2:]):
            result = union([src], int(shape[1]))  # a reduction across channels at each position
        elif name in ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d"):
            result = _adaptive(src, tuple(shapes[first.name][2:]), modules[node.target].output_size)
        elif name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
            result = _adaptive(src, tuple(shapes[first.name][2:]), _arg(node, 1, "output_size"))
        elif node.op == "call_function" and name == "getitem":
            in_shape = shapes.get(first.name)
            result = _getitem(src, node.args[1], in_shape) if in_shape else None
            if result is None:
                unknown(node, f"indexing at node {node.name} is not a plain slice")
        elif node.op == "call_function" and name == "pad":
            result = _pad(src, _arg(node, 1, "pad"))
        elif node.op == "call_function" and name == "cat":
            tensors = _arg(node, 0, "tensors")
            dim = _arg(node, 1, "dim", 0)
            parts = [fields.get(t.name) for t in tensors]
            if dim in (1, -3) and all(p is not None for p in parts):
                stride = np.maximum.reduce([p.stride for p in parts])
                result = Field(np.concatenate([p.start for p in parts]), np.concatenate([p.end for p in parts]), stride)
            else:
                result = unknown(node, inherited or f"cat at node {node.name} joins along dimension {dim}, not channels")
        elif pointwise:
            result = _pointwise(node, args, fields, shapes, shape)
            if result is None:
                unknown(node, inherited or f"{name} at node {node.name} changes the map size")
        else:
            result = unknown(node, inherited or f"{name} at node {node.name}: its spatial effect is not modelled")
        fields[node.name] = result
    return fields


def _pointwise(node, ins, fields, shapes, shape) -> Field | None:
    """Element-wise or channel-mixing operations at each position.

    An input reduced to 1 x 1 and broadcast over the map (a squeeze-and-excitation gate, a global
    scale) modulates every unit alike: it does not locate, so its global support is not counted
    (the convention of receptive-field tables for SE networks)."""
    spatial = [a for a in ins if tuple((shapes.get(a.name) or (0, 0, 0, 0))[2:]) == tuple(shape[2:])]
    broadcast = [a for a in ins if a not in spatial and tuple((shapes.get(a.name) or (0, 0, -1, -1))[2:]) == (1, 1)]
    if not spatial or len(spatial) + len(broadcast) != len(ins):
        return None
    if any(fields[a.name] is None for a in spatial):
        return None
    return union([fields[a.name] for a in spatial], int(shape[1]))
