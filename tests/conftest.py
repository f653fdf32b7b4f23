"""Shared fixtures: deterministic synthetic images, tiny models, the optional ../shared/data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("NEURONINDEX_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(HERE))

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (255, 255, 255)}


def make_image(kind: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A grey noisy background with a coloured square at a random place."""
    img = np.clip(rng.normal(110, 20, (size, size, 3)), 0, 255)
    s = int(rng.integers(4, 8))
    y, x = (int(v) for v in rng.integers(0, size - s, 2))
    img[y:y + s, x:x + s] = COLOURS[kind]
    return img.astype(np.uint8)


def write_folder(root: Path, per_class: int = 8, size: int = 16, seed: int = 0,
                 kinds=("red", "green", "blue")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for kind in kinds:
        d = root / kind
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(make_image(kind, rng, size)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("images") / "shapes", per_class=8)


@pytest.fixture(scope="session")
def tiny_loaded():
    from neuronindex.nets.models import Preprocessing, load_model

    return load_model("python:tinymodels:tiny_cnn",
                      preprocessing=Preprocessing(input_size=(16, 16), geometry="resize", resize=None,
                                                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))


def native_expected() -> bool:
    """The install builds the native pass-1 kernels (neuronindex/_pass1.cpp) wherever a C++
    compiler is at hand."""
    import shutil
    import sysconfig

    return shutil.which((sysconfig.get_config_var("CXX") or "c++").split()[0]) is not None


def shared(*parts) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared/data)")
    return path


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="session")
def hierarchy_index(tmp_path_factory, tiny_loaded) -> Path:
    """The tiny model over coloured squares filed under a hierarchy: warm/red, cool/green, cool/blue."""
    from neuronindex.jobs.ingest import IngestParams, ingest

    root = tmp_path_factory.mktemp("hierarchy")
    write_folder(root / "images" / "warm", per_class=10, kinds=("red",), seed=1)
    write_folder(root / "images" / "cool", per_class=10, kinds=("green", "blue"), seed=2)
    ingest(tiny_loaded, str(root / "images"), "conv1,conv2", root / "index", params=IngestParams(top_k=10),
           progress=False)
    return root / "index"
