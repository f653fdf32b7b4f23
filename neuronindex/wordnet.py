"""WordNet 3.0 hypernyms for class names that are WordNet ids (n02085620 -> dog -> canine -> ...).

Two sources, the first found is used:
  * the noun database of Debian's `wordnet-base` package (/usr/share/wordnet/data.noun, or the
    file named by $NEURONINDEX_WORDNET): every noun synset;
  * the ImageNet-1k hierarchy shipped inside this package (`imagenet_wordnet.tsv`): the 1,000
    ILSVRC-2012 classes and every hypernym up to `entity` (1,808 synsets), cut from WordNet 3.0
    by `write_bundle` with WordNet's licence in its header. So `dog` finds the breeds with pip
    alone; other WordNet ids need Debian's database.
Each synset's first hypernym pointer (`@`, or `@i` for instances) is taken as its parent, which
gives a tree.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

DEFAULT = Path("/usr/share/wordnet/data.noun")
BUNDLE = Path(__file__).with_name("imagenet_wordnet.tsv")
LICENCE_LINES = 29  # data.noun's header: WordNet 3.0's licence, copied into the bundle


def database() -> Path | None:
    """Debian's full noun database, when installed."""
    path = Path(os.environ.get("NEURONINDEX_WORDNET", DEFAULT))
    return path if path.is_file() else None


@lru_cache(maxsize=2)
def _synsets(path: str) -> dict[str, tuple[str, str | None]]:
    """wnid -> (first lemma, parent wnid), from a WordNet data.noun file."""
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


@lru_cache(maxsize=1)
def bundled() -> dict[str, tuple[str, str | None]]:
    """wnid -> (first lemma, parent wnid) of the shipped ImageNet-1k hierarchy."""
    out: dict[str, tuple[str, str | None]] = {}
    for line in BUNDLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            wnid, lemma, parent = line.split("\t")
            out[wnid] = (lemma, parent or None)
    return out


def _lookup() -> dict[str, tuple[str, str | None]]:
    path = database()
    return _synsets(str(path)) if path is not None else bundled()


def source() -> str:
    """Where names and hypernyms come from, for messages."""
    path = database()
    return f"WordNet 3.0 ({path})" if path is not None else "the bundled ImageNet-1k WordNet hierarchy"


def knows(wnid: str) -> bool:
    return wnid in _lookup()


def hypernyms(wnid: str) -> list[tuple[str, str]]:
    """[(wnid, lemma)] from the synset's parent up to the root; [] for an unknown id."""
    synsets = _lookup()
    chain, seen = [], {wnid}
    parent = synsets.get(wnid, (None, None))[1]
    while parent and parent not in seen:
        seen.add(parent)
        lemma, up = synsets.get(parent, (parent, None))
        chain.append((parent, lemma))
        parent = up
    return chain


def lemma(wnid: str) -> str | None:
    """The synset's first lemma (`n01440764` -> `tench`); None for an unknown id."""
    found = _lookup().get(wnid)
    return found[0] if found else None


def write_bundle(wnids: list[str], database_path: Path, out: Path = BUNDLE) -> int:
    """Write the hierarchy of `wnids` (and every hypernym) from a WordNet data.noun file, with
    WordNet's licence as the header. Returns the number of synsets written. The shipped file was
    made from Debian's wordnet-base with the 1,000 ILSVRC-2012 ids (timm's imagenet_synsets.txt)."""
    synsets = _synsets(str(database_path))
    keep: dict[str, tuple[str, str | None]] = {}
    for wnid in wnids:
        while wnid and wnid not in keep:
            keep[wnid] = synsets[wnid]
            wnid = synsets[wnid][1]
    with open(database_path, encoding="utf-8") as f:
        licence = [re.sub(r"^\s*\d+ ?", "", next(f).rstrip()) for _ in range(LICENCE_LINES)]
    lines = ["# The ImageNet-1k (ILSVRC-2012) classes and their WordNet 3.0 hypernyms: wnid, first lemma, parent.",
             "# Cut from WordNet 3.0's noun database by neuronindex.wordnet.write_bundle. WordNet's licence:", "#"]
    lines += [f"# {text}".rstrip() for text in licence]
    lines += [f"{w}\t{lemma_}\t{parent or ''}" for w, (lemma_, parent) in sorted(keep.items())]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(keep)
