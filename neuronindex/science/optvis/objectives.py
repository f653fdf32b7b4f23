"""What activation maximisation maximises (Dai 2020 eq. 1): objects with `nodes` (the layers they
read), `value(out)` (B,) the quantity ascended and `activation(out)` (B,) what is reported; and the
total-variation regulariser."""
from __future__ import annotations
from dataclasses import dataclass
import numpy as np


def total_variation(x):
    """Per image: mean squared difference of vertical and horizontal neighbours (B,)."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dy + dx


@dataclass
class UnitObjective:
    """B units of one layer, each a weight vector over its channels (a channel: one-hot; a
    direction: its weights) plus an offset: value = unit at `at` (unit) or the map's mean
    (channel); activation = unit at `at` (unit) or the map's spatial maximum (channel).

    A channel of a rectified layer is optimised on its pre-activation (the node before the ReLU,
    `rectify`): the optimum is the same, and the gradient does not vanish where the unit starts
    below zero (a grey start leaves many first-layer units there)."""

    node: str
    weights: object  # (B, C) tensor
    offsets: object  # (B,)
    kind: str
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

    def value(self, out):
        m = self.maps(out)
        if self.kind == "unit":
            return m[:, self.at[0], self.at[1]]
        return m.flatten(1).mean(1)

    def activation(self, out):
        m = self.maps(out)
        a = m[:, self.at[0], self.at[1]] if self.kind == "unit" else m.flatten(1).amax(1)
        return a.clamp(min=0) if self.rectify else a


@dataclass
class Term:
    """One term of a sum: weight * (kind, what), kind in unit, channel, layer, class, prob."""

    weight: float
    kind: str
    node: str | None = None
    vector: np.ndarray | None = None  # over the node's channels (unit, channel)
    offset: float = 0.0
    at: tuple[int, int] | None = None
    output: int | None = None  # class, prob
    text: str = ""


@dataclass
class SumObjective:
    """Sums of weighted terms, one sum per image of the batch (Dai 2020: composite objectives)."""

    sums: list[list[Term]]
    output_node: str | None = None
    norm: object = None

    @property
    def nodes(self) -> list[str]:
        nodes = [t.node for s in self.sums for t in s if t.node is not None]
        if any(t.kind in ("class", "prob") for s in self.sums for t in s):
            nodes.append(self.output_node)
        return list(dict.fromkeys(nodes))

    def value(self, out):
        import torch

        values = []
        for b, terms in enumerate(self.sums):
            v = 0.0
            for t in terms:
                v = v + t.weight * _term(t, out, b, self.output_node)
            values.append(v if torch.is_tensor(v) else torch.tensor(float(v), device=self._device(out)))
        return torch.stack(values)

    activation = value

    @staticmethod
    def _device(out):
        return next(iter(out.values())).device


def _term(t: Term, out, b: int, output_node):
    import torch

    if t.kind in ("class", "prob"):
        logits = out[output_node][b].flatten()
        return logits[t.output] if t.kind == "class" else torch.softmax(logits, 0)[t.output]
    a = out[t.node][b]
    if t.kind == "layer":
        return a.mean()
    m = torch.einsum("chw,c->hw", a, torch.as_tensor(t.vector, dtype=a.dtype, device=a.device)) + t.offset
    return m[t.at] if t.kind == "unit" else m.mean()
