"""Image sources -> an ordered list of image records with labels and a class hierarchy.

Sources:
  an image folder with class sub-folders; nested folders form a class hierarchy
      (`animals/dog/husky/*.jpg`: class husky, parent dog, grandparent animals)
  a flat folder of images (unlabeled)
  a manifest CSV with a header `path,label[,parent,...]` (paths relative to the CSV's folder;
      extra columns give ancestors, nearest first)
  torchvision:NAME[:split]   a torchvision dataset (CIFAR10, CIFAR100, MNIST, ...), downloaded
      with download=True for users with internet
Class names that are WordNet ids (n01440764) are recognised and kept in `wnid`.
Decoding applies EXIF orientation and converts greyscale, palette, CMYK and alpha images to RGB.
A file that cannot be decoded is recorded with its reason and skipped; it never stops a run.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
WNID = re.compile(r"^n\d{8}$")


@dataclass
class ClassNode:
    name: str
    parent: str | None  # name of the parent class, None at the top
    wnid: str | None = None


@dataclass
class ImageRecord:
    position: int
    path: str  # file path, or `torchvision:NAME:split/index`
    label: str | None  # leaf class name


@dataclass
class ImageSet:
    name: str
    source: str
    kind: str
    images: list[ImageRecord]
    classes: dict[str, ClassNode] = field(default_factory=dict)  # leaf and ancestor classes by name
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) found while listing
    _dataset: object = None  # the torchvision dataset, when kind == torchvision

    @property
    def leaf_classes(self) -> list[str]:
        return sorted({r.label for r in self.images if r.label is not None})

    def counts(self) -> Counter:
        return Counter(r.label for r in self.images)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for r in self.images:
            digest.update(f"{r.path}\t{r.label}\n".encode())
        return digest.hexdigest()

    def ancestors(self, name: str) -> list[str]:
        out, node = [], self.classes.get(name)
        while node is not None and node.parent is not None:
            out.append(node.parent)
            node = self.classes.get(node.parent)
        return out

    def subset(self, start: int = 0, stop: int | None = None) -> "ImageSet":
        images = self.images[start:stop]
        return ImageSet(self.name, self.source, self.kind, images, self.classes, self.problems, self._dataset)

    def load(self, record: ImageRecord):
        """PIL RGB image for a record; raises DataError with the reason when unreadable."""
        if self.kind == "torchvision":
            index = int(record.path.rsplit("/", 1)[1])
            image = self._dataset[index][0]
            return _to_rgb(image)
        return load_image(record.path)


def _to_rgb(image):
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def load_image(path: str | os.PathLike):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = 200_000_000
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


def open_source(source: str, download: bool = False, root: str | None = None) -> ImageSet:
    """List the images of a source (no decoding yet)."""
    if source.startswith("torchvision:"):
        return with_wordnet(_torchvision_source(source, download, root))
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"image source {source} does not exist; pass a folder, a manifest .csv or torchvision:NAME")
    path = path.resolve()  # the index records absolute paths: it is used from other directories
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{source} is a file but not a manifest CSV; pass a folder or a .csv with path,label columns")
        return with_wordnet(_manifest_source(path))
    return with_wordnet(_folder_source(path))


def with_wordnet(images: ImageSet) -> ImageSet:
    """Give classes named by WordNet ids, and without a parent of their own, their WordNet hypernyms.

    Ancestors are named by their first lemma (`dog`), so a search for "dog" finds every breed;
    a lemma already used by another class keeps its WordNet id as its name.
    """
    from . import wordnet

    orphans = [c for c in images.classes.values() if c.wnid and c.parent is None]
    if not orphans or wordnet.database() is None:
        return images
    name_of: dict[str, str] = {c.wnid: c.name for c in images.classes.values() if c.wnid}
    for leaf in orphans:
        child = leaf
        for wnid, lemma in wordnet.hypernyms(leaf.wnid):
            if wnid not in name_of:
                name_of[wnid] = lemma if lemma not in images.classes else wnid
                images.classes[name_of[wnid]] = ClassNode(name_of[wnid], None, wnid)
            child.parent = name_of[wnid]
            child = images.classes[name_of[wnid]]
            if child.parent is not None:
                break  # the rest of the chain is already there
    return images


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _folder_source(root: Path) -> ImageSet:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    images = [p for p in files if _is_image(p)]
    problems = [(str(p), "not an image file (unknown extension)") for p in files
                if not _is_image(p) and p.suffix.lower() not in (".txt", ".csv", ".json", ".md")]
    if not images:
        raise DataError(f"no images found under {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    flat = all(p.parent == root for p in images)
    classes: dict[str, ClassNode] = {}
    records = []
    for i, p in enumerate(images):
        label = None
        if not flat:
            parts = p.relative_to(root).parts[:-1]
            if not parts:
                label = None
            else:
                for depth, part in enumerate(parts):
                    parent = parts[depth - 1] if depth else None
                    if part not in classes:
                        classes[part] = ClassNode(part, parent, part if WNID.match(part) else None)
                label = parts[-1]
        records.append(ImageRecord(i, str(p), label))
    kind = "flat" if flat else "folder"
    return ImageSet(root.name or str(root), str(root), kind, records, classes, problems)


def _manifest_source(path: Path) -> ImageSet:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or [h.strip().lower() for h in header[:2]] != ["path", "label"][: len(header[:2])] or header[0].strip().lower() != "path":
            raise DataError(f"manifest {path} needs a header line `path,label[,parent,...]`")
        rows = list(reader)
    classes: dict[str, ClassNode] = {}
    records = []
    for i, row in enumerate(rows):
        if not row or not row[0].strip():
            continue
        p = Path(row[0].strip())
        if not p.is_absolute():
            p = path.parent / p
        label = row[1].strip() if len(row) > 1 and row[1].strip() else None
        if label is not None:
            chain = [label] + [c.strip() for c in row[2:] if c.strip()]
            for j, name in enumerate(chain):
                parent = chain[j + 1] if j + 1 < len(chain) else None
                if name not in classes or (classes[name].parent is None and parent is not None):
                    classes[name] = ClassNode(name, parent, name if WNID.match(name) else None)
        records.append(ImageRecord(len(records), str(p), label))
    if not records:
        raise DataError(f"manifest {path} lists no images")
    return ImageSet(path.stem, str(path), "manifest", records, classes)


def _torchvision_source(source: str, download: bool, root: str | None) -> ImageSet:
    import torchvision.datasets as tvd

    parts = source.split(":")
    name = parts[1] if len(parts) > 1 else ""
    split = parts[2] if len(parts) > 2 else "test"
    cls = getattr(tvd, name, None)
    if cls is None or not isinstance(cls, type):
        from .errors import did_you_mean

        raise DataError(f"torchvision has no dataset {name!r}{did_you_mean(name, [n for n in dir(tvd) if n[0].isupper()])}")
    root = root or os.path.join(os.path.expanduser("~"), ".cache", "neuronindex", "datasets")
    kwargs = {"root": root, "download": download}
    try:
        try:
            dataset = cls(train=(split == "train"), **kwargs)
        except TypeError:
            dataset = cls(split=split, **kwargs)
    except RuntimeError as exc:
        hint = "" if download else " (add --download to fetch it; needs internet)"
        raise DataError(f"torchvision dataset {name} is not available: {str(exc).splitlines()[0]}{hint}") from None
    except Exception as exc:
        raise DataError(f"cannot download torchvision dataset {name} ({type(exc).__name__}); check the internet connection") from None
    class_names = list(getattr(dataset, "classes", []) or [])
    targets = getattr(dataset, "targets", None)
    records = []
    for i in range(len(dataset)):
        label = None
        if targets is not None and class_names:
            label = class_names[int(targets[i])]
        records.append(ImageRecord(i, f"torchvision:{name}:{split}/{i}", label))
    classes = {c: ClassNode(c, None, c if WNID.match(c) else None) for c in class_names}
    return ImageSet(f"{name}-{split}", source, "torchvision", records, classes, _dataset=dataset)


def survey(images: ImageSet, check: bool = True, progress: bool = False) -> dict:
    """Counts per class and problems found (decoding every image when `check`)."""
    problems = list(images.problems)
    if check:
        from tqdm import tqdm

        for r in tqdm(images.images, desc="checking images", unit="img", disable=not progress):
            try:
                images.load(r)
            except DataError as exc:
                problems.append((r.path, str(exc)))
    counts = images.counts()
    return {
        "source": images.source, "kind": images.kind, "images": len(images.images),
        "classes": {("(unlabeled)" if k is None else k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))},
        "hierarchy": {n: c.parent for n, c in images.classes.items() if c.parent},
        "problems": [{"path": p, "reason": r} for p, r in problems],
    }


class GeometricDataset:
    """torch Dataset: record -> (uint8 HxWx3 array as the model sees it, position, ok flag)."""

    def __init__(self, images: ImageSet, preprocessing):
        self.images = images
        self.pre = preprocessing

    def __len__(self):
        return len(self.images.images)

    def __getitem__(self, i):
        record = self.images.images[i]
        h, w = self.pre.input_size
        try:
            array = np.asarray(self.pre.geometric(self.images.load(record)), dtype=np.uint8)
            return array, record.position, ""
        except DataError as exc:
            return np.zeros((h, w, 3), np.uint8), record.position, str(exc)
