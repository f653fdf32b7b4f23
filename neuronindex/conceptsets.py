"""Concept sets for Network Dissection (Bau et al., CVPR 2017): images with pixel-level concept
annotations, read as they come from disk (`open_concepts`).

Two layouts:

- **Broden** (the NetDissect dataset): `index.csv` (columns image, split, ih, iw, sh, sw, then one
  per category: mask PNGs for pixel categories such as color, object, part, material, separated
  by `;`; label numbers for image-level categories such as scene and texture), `label.csv`
  (number, name, category as `object(120);part(3)`, ...), images under `images/`. A mask PNG holds
  a label number per pixel in R + 256 G. A label counts in its main category (the one its
  `category` field counts most often); in another category's masks it is ignored.
- **plain**, for one's own annotations: `labels.csv` with columns id, name, category (ids from 1;
  0 is "no concept"), images anywhere under `images/`, and per category a mask PNG of the same
  relative path under `masks/<category>/` (suffix `.png`; grey levels, 16-bit grey, or R + 256 G
  for RGB) holding each pixel's label id. An image is annotated for the categories it has a
  mask for.

Colour concepts need no folder: `colour` names every pixel of the model's own images
(`science.concepts`). Masks reach the model's input by the image's own geometry (nearest
neighbour, so label ids survive), then the masks' resolution.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from neuronindex.data import load_image, printable
from neuronindex.errors import UsageError


@dataclass(frozen=True)
class ConceptImage:
    path: str
    masks: dict[str, list[str]] = field(default_factory=dict)  # category -> mask PNGs
    whole: dict[str, list[int]] = field(default_factory=dict)  # category -> image-level label numbers


@dataclass
class ConceptSet:
    """Concepts 1..C (`names[i - 1]` in `category_of_name`), their categories, the images."""
    source: str
    layout: str
    names: list[str]
    concept_categories: list[str]
    images: list[ConceptImage]
    lookup: np.ndarray  # label number in the files -> concept id (0: none)

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(self.concept_categories))

    def category_of(self) -> np.ndarray:
        """(C + 1,) category index of each concept id (index 0 unused)."""
        index = {c: i for i, c in enumerate(self.categories)}
        return np.array([0] + [index[c] for c in self.concept_categories], dtype=np.int64)

    def image(self, item: ConceptImage):
        return load_image(item.path)

    def labels(self, item: ConceptImage, image_size: tuple[int, int], geometric, size: tuple[int, int]
               ) -> dict[int, list[np.ndarray]]:
        """category index -> label maps (h, w) = `size` of concept ids, for one image of
        `image_size` (w, h) that the model sees through `geometric(pil_image, resample)`."""
        index = {c: i for i, c in enumerate(self.categories)}
        own = self.category_of()
        out: dict[int, list[np.ndarray]] = {}
        for category, paths in item.masks.items():
            g = index[category]
            for p in paths:
                raw = _read_mask(p)
                ids = self.lookup[np.clip(raw, 0, len(self.lookup) - 1)]
                ids = np.where(own[ids] == g, ids, 0).astype(np.int32)
                im = Image.fromarray(ids, mode="I").resize(image_size, Image.NEAREST)
                im = geometric(im, Image.NEAREST).resize((size[1], size[0]), Image.NEAREST)
                out.setdefault(g, []).append(np.asarray(im, dtype=np.int64))
        for category, numbers in item.whole.items():
            g = index[category]
            for n in numbers:
                c = int(self.lookup[n]) if 0 <= n < len(self.lookup) else 0
                if c and own[c] == g:
                    out.setdefault(g, []).append(np.full(size, c, dtype=np.int64))
        return out


def _read_mask(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                a = np.asarray(im.convert("RGB"), dtype=np.int64)
                return a[..., 0] + 256 * a[..., 1]
            if im.mode == "P":
                im = im.convert("L") if "transparency" not in im.info else im
            return np.asarray(im, dtype=np.int64)
    except OSError as e:
        raise UsageError(f"cannot read the concept mask {printable(path)}: {e}; every mask must be a PNG") from None


def open_concepts(path: str | Path) -> ConceptSet:
    """The concept set in a folder (Broden or plain layout), with a one-line error otherwise. Its
    `source` is the folder's absolute path: the same set named two ways is one set (a dissection
    with it again replaces the one before)."""
    root = Path(path).expanduser().resolve()
    if (root / "index.csv").is_file() and (root / "label.csv").is_file():
        return _broden(root)
    if (root / "labels.csv").is_file():
        return _plain(root)
    raise UsageError(f"{printable(root)} is not a concept set: expected a Broden folder (index.csv, label.csv) or "
                     "a plain one (labels.csv, images/, masks/<category>/); or use --concepts colour")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _main_category(field: str) -> str:
    counts = [(m.group(1), int(m.group(2) or 0)) for m in re.finditer(r"([A-Za-z_]+)(?:\((\d+)\))?", field or "")]
    if not counts:
        return "object"
    return max(counts, key=lambda kv: kv[1])[0]


def _lookup(numbered: list[tuple[int, str, str]]) -> np.ndarray:
    """Label number in the files -> concept id (1.. in `numbered` order; 0: none)."""
    lookup = np.zeros(max([n for n, _, _ in numbered], default=0) + 1, dtype=np.int64)
    for i, (n, _, _) in enumerate(numbered, 1):
        lookup[n] = i
    return lookup


def _broden(root: Path) -> ConceptSet:
    labels = _rows(root / "label.csv")
    try:
        numbered = sorted((int(r["number"]), r["name"], _main_category(r.get("category", ""))) for r in labels)
    except (KeyError, ValueError):
        raise UsageError(f"{printable(root / 'label.csv')} needs number, name and category columns") from None
    numbered = [t for t in numbered if t[0] > 0]
    lookup = _lookup(numbered)
    rows = _rows(root / "index.csv")
    if rows and "image" not in rows[0]:
        raise UsageError(f"{printable(root / 'index.csv')} needs an image column")
    fixed = {"image", "split", "ih", "iw", "sh", "sw"}
    images = []
    for r in rows:
        masks, whole = {}, {}
        for col, value in r.items():
            if col in fixed or not value:
                continue
            parts = [v for v in value.split(";") if v]
            if all(v.isdigit() for v in parts):
                whole[col] = [int(v) for v in parts]
            else:
                masks[col] = [str(root / "images" / v) for v in parts]
        images.append(ConceptImage(str(root / "images" / r["image"]), masks, whole))
    return ConceptSet(str(root), "broden", [n for _, n, _ in numbered], [c for _, _, c in numbered], images, lookup)


def _plain(root: Path) -> ConceptSet:
    rows = _rows(root / "labels.csv")
    try:
        numbered = sorted((int(r["id"]), r["name"].strip(), (r.get("category") or "object").strip()) for r in rows)
    except (KeyError, ValueError):
        raise UsageError(f"{printable(root / 'labels.csv')} needs id and name columns (and category)") from None
    if any(n <= 0 for n, _, _ in numbered):
        raise UsageError(f"{printable(root / 'labels.csv')}: label ids start at 1 (0 is 'no concept')")
    lookup = _lookup(numbered)
    categories = list(dict.fromkeys(c for _, _, c in numbered))
    images = []
    folder = root / "images"
    for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if not p.is_file() or p.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}:
            continue
        rel = p.relative_to(folder).with_suffix(".png")
        masks = {c: [str(root / "masks" / c / rel)] for c in categories if (root / "masks" / c / rel).is_file()}
        if masks:
            images.append(ConceptImage(str(p), masks))
    if not images:
        raise UsageError(f"{printable(root)} has no image with a mask: put images under images/ and their masks "
                         "under masks/<category>/ with the same relative path (.png)")
    return ConceptSet(str(root), "plain", [n for _, n, _ in numbered], [c for _, _, c in numbered], images, lookup)
