"""Image sources -> an ordered list of image records with labels and a class hierarchy.

Sources:
  an image folder with class sub-folders; nested folders form a class hierarchy
      (`animals/dog/husky/*.jpg`: class husky, parent dog, grandparent animals)
  a flat folder of images: unlabeled, or labelled by file name (ImageNet's `n01440764_tench.JPEG`
      is recognised by itself; `labels="regex:PATTERN"` for other schemes) or by a ground-truth
      file (ImageNet's validation layout: `labels="val.txt"`, see `read_ground_truth`)
  a manifest CSV with a header `path,label[,parent,...]` (paths relative to the CSV's folder;
      extra columns give ancestors, nearest first)
  torchvision:NAME[:split]   a torchvision dataset (CIFAR10, CIFAR100, MNIST, ...), downloaded
      with download=True for users with internet
Classes given by WordNet ids (n01440764) keep the id in `wnid` and are named by their lemma
(`tench`, `golden retriever`): from WordNet (Debian's wordnet-base, else the ImageNet-1k hierarchy
this package ships), else from the
file name (`n01440764_tench.JPEG`); without either they keep the id, with one warning.
Decoding applies EXIF orientation and converts greyscale, palette, CMYK and alpha images to RGB.
A file that cannot be decoded is recorded with its reason and skipped; it never stops a run.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from neuronindex import wordnet
from neuronindex.errors import DataError, did_you_mean
from neuronindex.settings import default

LABEL_PRESETS = {"imagenet": r"^(?P<label>n\d{8})(?:[_.-](?P<name>[^.]*))?"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
WNID = re.compile(r"^n\d{8}$")


@dataclass
class ClassNode:
    name: str
    parent: str | None  # name of the parent class, None at the top
    wnid: str | None = None
    display: str | None = None  # a name the files carry (n01440764_tench.JPEG), used without WordNet

    @classmethod
    def named(cls, name: str, parent: str | None = None) -> "ClassNode":
        """A class whose WordNet id, if its name is one, is recorded in `wnid`."""
        return cls(name, parent, name if WNID.match(name) else None)


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
    labels: str = "auto"  # how labels were read (see open_source); stored with the dataset
    class_list: str | None = None  # the class list of numbered ground-truth labels

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
        return ImageSet(self.name, self.source, self.kind, images, self.classes, self.problems, self._dataset,
                        self.labels, self.class_list)

    def load(self, record: ImageRecord):
        """PIL RGB image for a record; raises DataError with the reason when unreadable."""
        if self.kind == "torchvision":
            index = int(record.path.rsplit("/", 1)[1])
            image = self._dataset[index][0]
            return to_rgb(image)
        return load_image(record.path)


def to_rgb(image):
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _to_8bit(image):
    """16-bit and 32-bit greyscale (PNG, TIFF) scaled to 8 bits by their type's range, not clipped:
    I;16 and 16-bit data held as I by 257, floats in [0, 1] by 255."""

    a = np.asarray(image)
    if image.mode == "F":
        a = a * 255.0 if np.nanmax(a, initial=0) <= 1.0 else a
    elif image.mode.startswith("I;16") or a.max(initial=0) > 255:
        a = a / 257.0
    return Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8), "L")


def check_pixels(image, what: str) -> None:
    """Refuse an opened (not yet decoded) image above the `max_pixels` setting, from its header."""
    w, h = image.size
    if w * h > default("max_pixels"):
        raise DataError(f"{what} has {w}x{h} = {w * h / 1e6:.0f} Mpx, more than the {default('max_pixels') / 1e6:.0f} Mpx "
                        "limit (settings: max_pixels); use a smaller image")


def load_image(path: str | os.PathLike):
    Image.MAX_IMAGE_PIXELS = None  # check_pixels decides, from the header, before anything is decoded
    try:
        with Image.open(path) as im:
            check_pixels(im, f"image {printable(path)}")
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


def open_source(source: str, download: bool = False, root: str | None = None, labels: str = "auto",
                class_list: str | None = None) -> ImageSet:
    """List the images of a source (no decoding yet).

    labels (image folders only):
      auto          class sub-folders; in a flat folder, ImageNet file names (`nXXXXXXXX_*`) when
                    every image has one, else unlabeled
      folders       class sub-folders only
      imagenet      the WordNet id at the start of each file name
      regex:PATTERN the group named `label` (else the first group) of a search in each file name
      none          unlabeled
      PATH          a ground-truth file (see read_ground_truth); numbered labels need
                    `class_list`, a file naming the classes in number order
    """
    if source.startswith("torchvision:"):
        _labels_not_for(source, labels, "a torchvision dataset")
        return name_classes(_torchvision_source(source, download, root))
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"image source {source} does not exist; pass a folder, a manifest .csv or torchvision:NAME")
    path = path.resolve()  # the index records absolute paths: it is used from other directories
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{source} is a file but not a manifest CSV; pass a folder or a .csv with path,label columns")
        _labels_not_for(source, labels, "a manifest")
        return name_classes(_manifest_source(path))
    images = _folder_source(path)
    if class_list and not Path(class_list).expanduser().is_file():
        raise DataError(f"class list {class_list} does not exist; pass a text file with one class per line")
    return name_classes(_relabel(images, labels or "auto", class_list))


def _labels_not_for(source: str, labels: str | None, what: str) -> None:
    if labels not in (None, "auto"):
        raise DataError(f"--labels applies to image folders; {source} is {what}, which carries its own labels")


def _relabel(images: ImageSet, labels: str, class_list: str | None) -> ImageSet:
    if labels == "auto":
        if images.kind != "flat":
            images.labels = "folders"
            return images
        pattern = re.compile(LABEL_PRESETS["imagenet"])
        if not all(pattern.match(Path(r.path).name) for r in images.images):
            images.labels = "none"
            return images
        labels = "imagenet"
    if labels == "folders":
        if images.kind == "flat":
            raise DataError(f"{images.source} has no class sub-folders; use --labels imagenet, regex:PATTERN or a "
                            "ground-truth file for a flat folder")
        images.labels = "folders"
        return images
    images.labels = labels
    images.classes = {}
    if labels == "none":
        for r in images.images:
            r.label = None
        return images
    if labels in LABEL_PRESETS or labels.startswith("regex:"):
        return _labels_from_names(images, LABEL_PRESETS.get(labels) or labels[len("regex:"):])
    if Path(labels).expanduser().is_file():
        images.labels = str(Path(labels).expanduser().resolve())
        found = read_ground_truth(images.labels, [r.path for r in images.images], class_list)
        if class_list:
            images.class_list = str(Path(class_list).expanduser().resolve())
        for r in images.images:
            r.label = found.get(r.path)
        for label in {r.label for r in images.images if r.label}:
            images.classes[label] = ClassNode.named(label)
        return images
    raise DataError(f"unknown --labels {labels!r}; use auto, folders, imagenet, regex:PATTERN, none, or the path of "
                    "a ground-truth file")


def _labels_from_names(images: ImageSet, pattern: str) -> ImageSet:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--labels regex {pattern!r} does not compile ({exc}); fix the pattern") from None
    if not regex.groups:
        raise DataError(f"--labels regex {pattern!r} has no group; mark the label with (...) or (?P<label>...)")
    key = "label" if "label" in regex.groupindex else 1
    unmatched = 0
    for r in images.images:
        m = regex.search(Path(r.path).name)
        r.label = m.group(key) if m and m.group(key) else None
        if r.label is None:
            unmatched += 1
            continue
        if r.label not in images.classes:
            images.classes[r.label] = ClassNode.named(r.label)
        shown = m.groupdict().get("name")
        node = images.classes[r.label]
        if node.display is None and shown and re.search(r"[A-Za-z]", shown):  # n01440764_10026.JPEG names nothing
            node.display = shown.replace("_", " ")
    if unmatched == len(images.images):
        raise DataError(f"no file name under {images.source} matches --labels {pattern!r}; check the pattern")
    if unmatched:
        _warn(f"{unmatched} of {len(images.images)} file names do not match the label pattern {pattern!r}; "
              "they are indexed unlabeled")
    return images


def read_ground_truth(path: str, image_paths: list[str], class_list: str | None = None) -> dict[str, str]:
    """Labels of a flat folder from a ground-truth file -> {image path: label}.

    Two forms:
      `NAME LABEL` per line (space, tab or comma; NAME with or without its extension; a header
          line that names no image is skipped; further fields are ignored, so Kaggle's
          LOC_val_solution.csv works): Caffe's val.txt numbers classes from 0.
      one LABEL per line, for the folder's images in sorted name order: the ILSVRC2012 devkit's
          validation ground truth, numbered from 1.
    LABEL is a class name or WordNet id, or a class number with `class_list` (one class per line
    in number order; the first word counts, so synset_words.txt works).
    """
    rows = [re.split(r"[,\s]+", line.strip()) for line in open(path, encoding="utf-8", errors="replace")
            if line.strip()]
    by_name = {}
    for p in image_paths:
        by_name[Path(p).name] = p
        by_name.setdefault(Path(p).stem, p)
    if rows and len(rows[0]) >= 2 and rows[0][0] not in by_name:
        rows = rows[1:]  # a header line
    if not rows:
        raise DataError(f"ground-truth file {path} lists no labels")
    two_columns = all(len(r) >= 2 for r in rows) and any(r[0] in by_name for r in rows)
    if two_columns:
        pairs = [(by_name.get(r[0]), r[1]) for r in rows]
        base = 0
    else:
        if len(rows) != len(image_paths):
            raise DataError(f"ground-truth file {path} has {len(rows)} lines and names no image; a one-label-per-line "
                            f"file needs exactly one line per image ({len(image_paths)})")
        pairs = list(zip(sorted(image_paths, key=lambda p: Path(p).name), (r[0] for r in rows)))
        base = 1
    names = None
    if any(label.isdigit() for _, label in pairs):
        if not class_list:
            raise DataError(f"the labels in {path} are class numbers; pass --class-list FILE naming the classes in "
                            "number order (one per line)")
        names = [line.split()[0].rstrip(",") for line in open(class_list, encoding="utf-8") if line.strip()]
    out = {}
    for image, label in pairs:
        if image is None:
            continue
        if names is not None and label.isdigit():
            i = int(label) - base
            if not 0 <= i < len(names):
                raise DataError(f"class number {label} in {path} is outside the class list ({len(names)} classes)")
            label = names[i]
        out[image] = label
    if not out:
        raise DataError(f"no image of the folder is named in the ground-truth file {path}")
    missing = len(image_paths) - len(out)
    if missing:
        _warn(f"{missing} of {len(image_paths)} images are not in {path}; they are indexed unlabeled")
    return out


_WARNED: set[str] = set()


def _warn(message: str) -> None:
    """One clear line on stderr, once per process for the same message."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr)


def name_classes(images: ImageSet) -> ImageSet:
    """Name classes given by WordNet ids by their lemma, then add their WordNet hypernyms.

    A leaf `n01440764` becomes `tench` (WordNet's first lemma, else the name its files carry);
    two classes with one lemma (ImageNet's two `crane`s) become `crane (n02012849)` and
    `crane (n03126707)`. The id stays in `wnid` and is accepted by searches.
    """

    ids = [c for c in images.classes.values() if c.wnid and c.name == c.wnid]
    if not ids:
        return images
    unknown = sorted(c.wnid for c in ids if not wordnet.knows(c.wnid))
    if unknown:
        _warn(f"{len(unknown)} WordNet ids ({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}) are not in "
              f"{wordnet.source()}: they keep the names their files carry and get no hypernyms; install Debian's "
              "wordnet-base (or set $NEURONINDEX_WORDNET) and run `neuronindex indexes` to add them")
    lemma = {c.wnid: wordnet.lemma(c.wnid) or c.display for c in ids}
    counts = Counter(v for v in lemma.values() if v)
    taken = set(images.classes) - {c.name for c in ids}
    rename = {}
    for c in ids:
        name = lemma[c.wnid]
        if not name:
            continue
        if counts[name] > 1 or name in taken:
            name = f"{name} ({c.wnid})"
        rename[c.name] = name
    if rename:
        images.classes = {rename.get(k, k): c for k, c in images.classes.items()}
        for c in images.classes.values():
            c.name = rename.get(c.name, c.name)
            if c.parent:
                c.parent = rename.get(c.parent, c.parent)
        for r in images.images:
            if r.label:
                r.label = rename.get(r.label, r.label)
    return with_wordnet(images)


def with_wordnet(images: ImageSet) -> ImageSet:
    """Give classes with a WordNet id, and without a parent of their own, their WordNet hypernyms.

    Ancestors are named by their first lemma (`dog`), so a search for "dog" finds every breed;
    a lemma already used by another class keeps its WordNet id as its name.
    """

    orphans = [c for c in images.classes.values() if c.wnid and c.parent is None]
    if not orphans:
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


def printable(path) -> str:
    """A path as text that any database and terminal take: bytes that are not UTF-8 (a file name
    from another system's encoding) shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _folder_source(root: Path) -> ImageSet:
    files, problems = [], []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.is_symlink() and not p.exists():
            try:
                p.resolve(strict=True)
                reason = "broken symbolic link"
            except RuntimeError:
                reason = "symbolic link loop"
            except OSError as exc:
                reason = "symbolic link loop" if exc.errno == 40 else "broken symbolic link"
            problems.append((printable(p), reason))
            continue
        if not p.is_file():
            continue
        if printable(p) != str(p):
            problems.append((printable(p), "file name is not valid UTF-8; rename the file to index it"))
            continue
        files.append(p)
    images = [p for p in files if _is_image(p)]
    problems += [(str(p), "not an image file (unknown extension)") for p in files
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
                        classes[part] = ClassNode.named(part, parent)
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
                    classes[name] = ClassNode.named(name, parent)
        records.append(ImageRecord(len(records), str(p), label))
    if not records:
        raise DataError(f"manifest {path} lists no images")
    return ImageSet(path.stem, str(path), "manifest", records, classes, labels="manifest")


def _torchvision_source(source: str, download: bool, root: str | None) -> ImageSet:
    import torchvision.datasets as tvd

    parts = source.split(":")
    name = parts[1] if len(parts) > 1 else ""
    split = parts[2] if len(parts) > 2 else "test"
    cls = getattr(tvd, name, None)
    if cls is None or not isinstance(cls, type):

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
    classes = {c: ClassNode.named(c) for c in class_names}
    return ImageSet(f"{name}-{split}", source, "torchvision", records, classes, _dataset=dataset, labels="torchvision")


def survey(images: ImageSet, check: bool = True, progress: bool = False) -> dict:
    """Counts per class and problems found (decoding every image when `check`)."""
    problems = list(images.problems)
    if check:

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
