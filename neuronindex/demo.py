"""The embedded default: a labelled synthetic image set, a small CNN trained on it, an index.

`run_demo(out)`:
  1. writes a synthetic image set (no downloads): six classes whose identity depends on colour,
     shape and texture, filed under parent classes for the hierarchy
         round/red_disc, round/yellow_ring, angular/blue_square, angular/purple_triangle,
         textured/green_stripes, textured/checkerboard
     on random-colour, noisy backgrounds at random positions and scales;
  2. trains a small VGG-style CNN on it (fixed seed; cached in OUT/model.pt) and reports held-out
     accuracy;
  3. ingests every conv layer into OUT/index (passes 1-2, its SVD and random directions, indexes,
     vectors);
  4. returns what the tour prints: layer summary, answers to a few queries, the checks.
A second run reuses the images, the model and the index.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

import neuronindex
from neuronindex import store
from neuronindex.data import load_image, open_source
from neuronindex.errors import UsageError
from neuronindex.jobs.dissect import dissect
from neuronindex.jobs.ingest import IngestParams, ingest
from neuronindex.nets.models import Preprocessing
from neuronindex.science.concepts import COLOUR_CONCEPTS, colour_labels

CLASSES = {
    "red_disc": "round", "yellow_ring": "round", "blue_square": "angular", "purple_triangle": "angular",
    "green_stripes": "textured", "checkerboard": "textured",
}
COLOURS = {"red_disc": (220, 30, 35), "yellow_ring": (240, 220, 40), "blue_square": (35, 60, 220),
           "purple_triangle": (140, 40, 170), "green_stripes": (40, 170, 60)}
SIZE = 32
VERSION = 1  # bump when the generator or the model changes: caches are keyed on it


SHAPES = {"red_disc": "disc", "yellow_ring": "ring", "blue_square": "square", "purple_triangle": "triangle",
          "green_stripes": "stripes", "checkerboard": "checkerboard"}
BLACK, WHITE = (20, 20, 20), (235, 235, 235)


def _draw(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image of a class, with its exact concept masks (drawn with the same strokes, before the
    noise): the shape's pixels (bool) and every pixel's colour as drawn, named by the colour model
    (colour-concept ids 1..11)."""
    bg = tuple(int(v) for v in rng.integers(40, 216, 3))
    img = Image.new("RGB", (SIZE, SIZE), bg)
    shape = Image.new("L", (SIZE, SIZE), 0)
    d, m = ImageDraw.Draw(img), ImageDraw.Draw(shape)
    s = int(rng.integers(10, 20))
    x0, y0 = (int(v) for v in rng.integers(0, SIZE - s, 2))
    box = (x0, y0, x0 + s, y0 + s)
    if kind == "red_disc":
        d.ellipse(box, fill=COLOURS[kind])
        m.ellipse(box, fill=1)
    elif kind == "yellow_ring":
        d.ellipse(box, outline=COLOURS[kind], width=max(2, s // 5))
        m.ellipse(box, outline=1, width=max(2, s // 5))
    elif kind == "blue_square":
        d.rectangle(box, fill=COLOURS[kind])
        m.rectangle(box, fill=1)
    elif kind == "purple_triangle":
        d.polygon([(x0 + s // 2, y0), (x0, y0 + s), (x0 + s, y0 + s)], fill=COLOURS[kind])
        m.polygon([(x0 + s // 2, y0), (x0, y0 + s), (x0 + s, y0 + s)], fill=1)
    elif kind == "green_stripes":
        step = int(rng.integers(3, 6))
        for x in range(x0, x0 + s, 2 * step):
            d.rectangle((x, y0, min(x + step - 1, x0 + s), y0 + s), fill=COLOURS[kind])
            m.rectangle((x, y0, min(x + step - 1, x0 + s), y0 + s), fill=1)
    elif kind == "checkerboard":
        step = int(rng.integers(3, 6))
        for i, y in enumerate(range(y0, y0 + s, step)):
            for j, x in enumerate(range(x0, x0 + s, step)):
                d.rectangle((x, y, x + step - 1, y + step - 1), fill=BLACK if (i + j) % 2 else WHITE)
                m.rectangle((x, y, x + step - 1, y + step - 1), fill=1)
    drawn = np.asarray(img)
    colour = colour_labels(drawn)
    a = drawn.astype(np.float32) + rng.normal(0, 8, (SIZE, SIZE, 3))
    return np.clip(a, 0, 255).astype(np.uint8), np.asarray(shape) > 0, colour


def write_images(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for kind, parent in CLASSES.items():
        folder = root / parent / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_draw(kind, rng)[0]).save(folder / f"{i:04d}.png")
    return root


def write_concepts(root: Path, per_class: int, seed: int) -> Path:
    """A concept set in the plain layout (`neuronindex.conceptsets`): new images of the six
    classes with their exact shape masks (disc, ring, square, triangle, stripes, checkerboard:
    category `shape`) and colour masks (the drawn colours named by the colour model: `colour`)."""
    shapes = list(dict.fromkeys(SHAPES.values()))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", encoding="utf-8") as f:
        f.write("id,name,category\n")
        f.writelines(f"{i},{name},shape\n" for i, name in enumerate(shapes, 1))
        f.writelines(f"{len(shapes) + i},{name},colour\n" for i, name in enumerate(COLOUR_CONCEPTS, 1))
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        for sub in ("images", "masks/shape", "masks/colour"):
            (root / sub / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels, shape, colour = _draw(kind, rng)
            Image.fromarray(pixels).save(root / "images" / kind / f"{i:04d}.png")
            ids = np.where(shape, shapes.index(SHAPES[kind]) + 1, 0).astype(np.uint8)
            Image.fromarray(ids).save(root / "masks" / "shape" / kind / f"{i:04d}.png")
            Image.fromarray((colour + len(shapes)).astype(np.uint8)).save(root / "masks" / "colour" / kind / f"{i:04d}.png")
    return root


def demo_cnn():
    """The demo's small VGG-style CNN (random weights; the demo trains it)."""
    import torch.nn as nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]

    model = nn.Sequential(
        nn.Sequential(*block(3, 16), *block(16, 16), nn.MaxPool2d(2), *block(16, 32), *block(32, 32), nn.MaxPool2d(2),
                      *block(32, 64), nn.MaxPool2d(2)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(CLASSES)))
    model.class_names = sorted(CLASSES)  # output k is the k-th class by name, as the demo trains it
    return model


def preprocessing():
    return Preprocessing(input_size=(SIZE, SIZE), geometry="resize", resize=None)


def _arrays(root: Path):
    images = open_source(str(root))
    names = sorted(CLASSES)
    x = np.stack([np.asarray(load_image(r.path)) for r in images.images])
    y = np.array([names.index(r.label) for r in images.images])
    return x, y


def train(train_root: Path, test_root: Path, weights: Path, epochs: int, seed: int, progress: bool = True) -> float:
    import torch

    torch.manual_seed(seed)
    model = demo_cnn()
    pre = preprocessing()
    x, y = _arrays(train_root)
    xt, yt = _arrays(test_root)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs * math.ceil(len(x) / 64))
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc="training the demo CNN", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), 64):
            idx = order[s:s + 64]
            batch = xs[idx]
            if torch.rand(1, generator=gen).item() < 0.5:
                batch = batch.flip(2)
            loss = torch.nn.functional.cross_entropy(model(pre.normalize(batch)), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        pred = model(pre.normalize(torch.from_numpy(xt))).argmax(1).numpy()
    torch.save(model.state_dict(), weights)
    return float((pred == yt).mean())


def run_demo(out: str | Path = "neuronindex-demo", per_class: int = 300, epochs: int = 12, seed: int = 0,
             progress: bool = True) -> dict:

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; give --out a folder (new or a previous demo's)")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    config = {"version": VERSION, "per_class": per_class, "epochs": epochs, "seed": seed}
    state_path = out / "demo.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    fresh = state.get("config") != config
    train_root, test_root = out / "images" / "train", out / "images" / "test"
    weights, index = out / "model.pt", out / "index"
    if fresh or not train_root.exists():

        for p in (out / "images", index, out / "concepts"):
            shutil.rmtree(p, ignore_errors=True)
        weights.unlink(missing_ok=True)
        write_images(train_root, per_class, seed)
        write_images(test_root, max(20, per_class // 5), seed + 1)
    if fresh or not weights.exists():
        state = {"config": config, "accuracy": train(train_root, test_root, weights, epochs, seed, progress)}
        state_path.write_text(json.dumps(state, indent=2))
    if (index / "index.duckdb").exists():
        store.migrate(index)  # an index a previous version made: brought to this schema
    if not (index / "index.duckdb").exists():
        ingest("python:neuronindex.demo:demo_cnn", str(train_root), "all-conv", index, weights=str(weights),
               name="demo_cnn", preprocessing=preprocessing(),
               params=IngestParams(top_k=100, batch_size=128, directions="svd,random"), progress=progress)
    concepts = out / "concepts"
    with neuronindex.open(index) as idx:
        dissected = idx.query("SELECT count(*) AS n FROM dissections WHERE source = ?", [str(concepts)]).rows()[0]["n"]
    if not dissected:
        if not (concepts / "labels.csv").exists():
            write_concepts(concepts, 50, seed + 2)
        dissect(index, str(concepts), progress=progress)
    return {"index": index, "accuracy": state["accuracy"], "test_images": test_root,
            "tour": tour(index, test_root, out), "seconds": time.time() - started}


def shapes_found(index: Path, layer: str) -> bool:
    """Network Dissection agrees with the class index: of the last layer's units whose top images
    are >= 90% one class, each one's best shape concept is its class's shape, and the disc, ring
    and stripes classes each have such a unit with IoU above the labelling threshold."""
    with neuronindex.open(index) as idx:
        rows = idx.query(
            "SELECT k.name AS top_class, c.name AS shape, u.iou FROM unit_concepts u JOIN neurons n ON n.id = u.neuron_id "
            "JOIN concepts c ON c.id = u.concept_id JOIN layers l ON l.id = n.layer_id JOIN classes k ON "
            "k.id = n.top_class_id WHERE l.name = ? AND c.category = 'shape' AND n.top_class_share >= 0.9 "
            "QUALIFY row_number() OVER (PARTITION BY n.id ORDER BY u.iou DESC) = 1", [layer]).rows()
    matched = [r for r in rows if SHAPES[r["top_class"]] == r["shape"]]
    labelled = {r["shape"] for r in matched if r["iou"] > 0.04}
    return bool(rows) and len(matched) >= 0.9 * len(rows) and {"disc", "ring", "stripes"} <= labelled


def tour(index: Path, test_root: Path, out: Path) -> dict:
    """The numbers the demo prints, and its own checks."""
    with neuronindex.open(index) as idx:
        shown = ("layer", "neurons", "dead", "mean_alpha", "colour_selective", "mean_gamma", "mean_m", "mean_csi", "sparsity")
        summary = [{k: round(r[k], 4) if isinstance(r[k], float) else r[k] for k in shown} for r in idx.summary().rows()]
        first, last = summary[0]["layer"], summary[-1]["layer"]
        red = idx.search(f"red {first} limit:5").rows()
        selective = idx.search(f"layer:{last} gamma>=0.9 sort:-csi limit:5").rows()
        rounds = idx.search(f"round {last} limit:5").rows()
        directions = idx.search(f"svd {last} limit:5").rows()
        probe = sorted((test_root / "round" / "red_disc").glob("*.png"))[0]
        near = idx.nearest(str(probe), None, last, k=5).rows()
        detectors = idx.detectors(source=str(out / "concepts")).rows()
        sheet = out / "red-neurons.html"
        idx.export(f"red {first}", "html", sheet)
    checks = {
        "a red colour-selective neuron of the first conv layer fires for red discs":
            any(r["top_class"] == "red_disc" for r in red),
        "class index grows from the first to the last conv layer": summary[-1]["mean_gamma"] > summary[0]["mean_gamma"],
        "dissection labels the disc, ring and stripes units of the last layer with their shape": shapes_found(index, last),
    }
    return {"summary": summary, "red": red, "selective": selective, "rounds": rounds, "directions": directions,
            "nearest": near,
            "nearest_image": str(probe), "sheet": sheet, "checks": checks, "first": first, "last": last,
            "detectors": detectors}
