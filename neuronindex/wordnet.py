"""WordNet 3.0 hypernyms for class names that are WordNet ids (n02085620 -> dog -> canine -> ...).

Reads the noun database of Debian's `wordnet-base` package (/usr/share/wordnet/data.noun, or the
file named by $NEURONINDEX_WORDNET). Each synset line holds its lemmas and pointers; the first
hypernym pointer (`@`, or `@i` for instances) is taken as the parent, which gives a tree.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

DEFAULT = Path("/usr/share/wordnet/data.noun")


def database() -> Path | None:
    path = Path(os.environ.get("NEURONINDEX_WORDNET", DEFAULT))
    return path if path.is_file() else None


@lru_cache(maxsize=2)
def _synsets(path: str) -> dict[str, tuple[str, str | None]]:
    """wnid -> (first lemma, parent wnid)."""
    out: dict[str, tuple[str, str | None]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):
                continue  # licence header
            fields = line.split(" | ", 1)[0].split()
            words = int(fields[3], 16)
            lemma = fields[4].replace("_", " ")
            pointers = int(fields[4 + 2 * words])
            parent = None
            for i in range(pointers):
                symbol, target, pos = fields[5 + 2 * words + 4 * i: 8 + 2 * words + 4 * i]
                if symbol in ("@", "@i") and pos == "n":
                    parent = "n" + target
                    break
            out["n" + fields[0]] = (lemma, parent)
    return out


def hypernyms(wnid: str) -> list[tuple[str, str]]:
    """[(wnid, lemma)] from the synset's parent up to the root; [] without the database."""
    path = database()
    if path is None:
        return []
    synsets = _synsets(str(path))
    chain, seen = [], {wnid}
    parent = synsets.get(wnid, (None, None))[1]
    while parent and parent not in seen:
        seen.add(parent)
        lemma, up = synsets.get(parent, (parent, None))
        chain.append((parent, lemma))
        parent = up
    return chain


def lemma(wnid: str) -> str | None:
    """The synset's first lemma (`n01440764` -> `tench`); None without the database or the id."""
    path = database()
    if path is None:
        return None
    found = _synsets(str(path)).get(wnid)
    return found[0] if found else None
