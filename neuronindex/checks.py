"""Checks of arguments every edge and the facade share: result counts, unit kinds, boxes."""
from __future__ import annotations

import math

from neuronindex.errors import UsageError

DIRECTION_KINDS = ("svd", "random", "user", "nmf", "sae")  # units whose map is a projection of a layer's map
DICTIONARY_KINDS = ("nmf", "sae")  # learned dictionaries' atoms
UNIT_KIND_NAMES = {"channel": ("channel",), **{k: (k,) for k in DIRECTION_KINDS}, "direction": DIRECTION_KINDS,
                   "atom": DICTIONARY_KINDS}


def unit_kinds(kind: str | None) -> tuple[str, ...] | None:
    """None (every kind) or the unit kinds a --kind value keeps."""
    if kind is None or kind == "all":
        return None
    if kind not in UNIT_KIND_NAMES:
        raise UsageError(f"unknown unit kind {kind!r}; use all, {', '.join(UNIT_KIND_NAMES)}")
    return UNIT_KIND_NAMES[kind]


def check_k(k) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 10_000:
        raise UsageError(f"k must be a whole number from 1 to 10000, not {k!r}")


def parse_box(text: str | None) -> list[float] | None:
    """'x0,y0,x1,y1' (image pixels) -> four floats; None for no box."""
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise UsageError(f"box {text!r} must be four finite numbers x0,y0,x1,y1 in image pixels")
    return values
