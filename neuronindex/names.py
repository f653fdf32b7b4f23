"""Names users give to things an index stores and URLs carry: models, layers, user directions.

A name is NFC-normalised (so the composed and decomposed spellings of `résnet` are one model),
starts with a letter or digit, and holds only letters, digits and `_ . - +` (any script's letters
and digits count; no spaces, slashes, control, zero-width or direction-override characters), at
most MAX_LENGTH characters. Anything else is a one-line UsageError naming the problem.
"""
from __future__ import annotations

import unicodedata

from neuronindex.errors import UsageError

MAX_LENGTH = 64
PUNCTUATION = "_.-+"


def valid_name(text: str, what: str = "name") -> str:
    """The NFC form of `text` when it is a valid name; else a UsageError saying why."""
    if not isinstance(text, str) or not text:
        raise UsageError(f"the {what} is empty; use letters, digits and _ . - +")
    name = unicodedata.normalize("NFC", text)
    if len(name) > MAX_LENGTH:
        raise UsageError(f"the {what} is {len(name):,} characters long; at most {MAX_LENGTH}")
    bad = [c for c in name if not (c.isalnum() or c in PUNCTUATION)]
    if bad:
        shown = ", ".join(sorted({repr(c) if c.isprintable() and not c.isspace() else f"U+{ord(c):04X}" for c in bad}))
        raise UsageError(f"the {what} {name!r} holds {shown}; use letters, digits and _ . - + only")
    if not name[0].isalnum():
        raise UsageError(f"the {what} {name!r} must start with a letter or a digit")
    return name
