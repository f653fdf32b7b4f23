"""What activation maximisation maximises (Dai 2020 eq. 1), as objects.

A batch objective has `nodes` (the layers it reads), `value(out)` (B,) the quantity ascended and
`activation(out)` (B,) what is reported; `norm` (B,) divides the value in the loss.

  UnitObjective     B units of one layer, each at its centre position (`at`)
  ChannelObjective  B units of one layer, each over its whole map (mean ascended, maximum reported)
  SumObjective      per image a weighted sum of terms (Dai 2020's composite objectives):
    UnitTerm  ChannelTerm  LayerTerm  ClassTerm (a logit)  ProbTerm (a softmax probability)

`map_objective(kind, ...)` and `term(kind, weight, ...)` turn the CLI's words into these objects.
And the total-variation regulariser.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def total_variation(x):
    """Per image: mean squared difference of vertical and horizontal neighbours (B,)."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dy + dx


# ---------------------------------------------------------------------------- batch objectives

@dataclass
class _MapObjective:
    """B units of one layer, each a weight vector over its channels (a channel: one-hot; a
    direction: its weights) plus an offset, read on the map `node`.

    A channel of a rectified layer is optimised on its pre-activation (the node before the ReLU,
    `rectify`): the optimum is the same, and the gradient does not vanish where the unit starts
    below zero (a grey start leaves many first-layer units there)."""

    node: str
    weights: object  # (B, C) tensor
    offsets: object  # (B,)
    at: tuple[int, int] | None
    norm: object  # (B,) divide the value by this in the loss (a_max)
    rectify: bool = False  # node is the pre-activation of a ReLU layer: activation = relu(value)

    @property
    def nodes(self) -> list[str]:
        return [self.node]

    def maps(self, out):
        import torch

        a = out[self.node]
        w, off = self.weights.to(a.device, a.dtype), self.offsets.to(a.device, a.dtype)
        return torch.einsum("bchw,bc->bhw", a, w) + off.view(-1, 1, 1)

    def _reported(self, a):
        return a.clamp(min=0) if self.rectify else a


class UnitObjective(_MapObjective):
    """Each unit at its position `at`: value and activation are the map there."""

    def value(self, out):
        return self.maps(out)[:, self.at[0], self.at[1]]

    def activation(self, out):
        return self._reported(self.value(out))


class ChannelObjective(_MapObjective):
    """Each unit over its whole map: the mean is ascended, the spatial maximum (a neuron's
    activation in the index) reported."""

    def value(self, out):
        return self.maps(out).flatten(1).mean(1)

    def activation(self, out):
        return self._reported(self.maps(out).flatten(1).amax(1))


MAP_OBJECTIVES = {"unit": UnitObjective, "channel": ChannelObjective}


def map_objective(kind: str, node: str, weights, offsets, at, norm, rectify: bool = False) -> _MapObjective:
    """The batch objective of an `--objective` word (unit or channel)."""
    return MAP_OBJECTIVES[kind](node, weights, offsets, at, norm, rectify)


# ---------------------------------------------------------------------------- terms of a sum

@dataclass
class _Term:
    weight: float
    text: str = ""
    node = None  # the layer a term reads (None: the output)
    reads_output = False

    def of(self, out, b: int, output_node: str | None):
        """The term's unweighted value on image b of the batch."""
        raise NotImplementedError


@dataclass
class LayerTerm(_Term):
    """The mean of a layer's whole map, every channel."""
    node: str | None = None

    def of(self, out, b, output_node):
        return out[self.node][b].mean()


@dataclass
class ChannelTerm(_Term):
    """The mean of one unit's map (a weight vector over the layer's channels plus an offset)."""
    node: str | None = None
    vector: np.ndarray | None = None
    offset: float = 0.0

    def _map(self, out, b):
        import torch

        a = out[self.node][b]
        return torch.einsum("chw,c->hw", a, torch.as_tensor(self.vector, dtype=a.dtype, device=a.device)) + self.offset

    def of(self, out, b, output_node):
        return self._map(out, b).mean()


@dataclass
class UnitTerm(ChannelTerm):
    """One unit's map at a position `at`."""
    at: tuple[int, int] | None = None

    def of(self, out, b, output_node):
        return self._map(out, b)[self.at]


@dataclass
class ClassTerm(_Term):
    """A class logit (pre-softmax) of the model's output."""
    output: int | None = None
    reads_output = True

    def of(self, out, b, output_node):
        return out[output_node][b].flatten()[self.output]


@dataclass
class ProbTerm(ClassTerm):
    """A class's softmax probability."""

    def of(self, out, b, output_node):
        import torch

        return torch.softmax(out[output_node][b].flatten(), 0)[self.output]


TERMS = {"unit": UnitTerm, "channel": ChannelTerm, "layer": LayerTerm, "class": ClassTerm, "prob": ProbTerm}


def term(kind: str, weight: float, **what) -> _Term:
    """The term of a kind word (unit, channel, layer, class, prob) with what it needs: node,
    vector, offset, at (unit, channel, layer), output (class, prob), text."""
    return TERMS[kind](weight, **what)


@dataclass
class SumObjective:
    """Sums of weighted terms, one sum per image of the batch (Dai 2020: composite objectives)."""

    sums: list[list[_Term]]
    output_node: str | None = None
    norm: object = None

    @property
    def nodes(self) -> list[str]:
        nodes = [t.node for s in self.sums for t in s if t.node is not None]
        if any(t.reads_output for s in self.sums for t in s):
            nodes.append(self.output_node)
        return list(dict.fromkeys(nodes))

    def value(self, out):
        import torch

        values = []
        for b, terms in enumerate(self.sums):
            v = 0.0
            for t in terms:
                v = v + t.weight * t.of(out, b, self.output_node)
            values.append(v if torch.is_tensor(v) else torch.tensor(float(v), device=self._device(out)))
        return torch.stack(values)

    activation = value

    @staticmethod
    def _device(out):
        return next(iter(out.values())).device
