"""Real pretrained CIFAR-10 ResNets on real CIFAR-10 images (skipped without ../shared/data)."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest

from conftest import shared
from neuronindex.data import open_source
from neuronindex.extract import predict
from neuronindex.ingest import IngestParams, ingest
from neuronindex.models import load_model

pytestmark = pytest.mark.shared_data


def test_cifar_resnet20_accuracy_on_lossless_test():
    weights = shared("cifar10-resnet", "resnet20-12fca82f.th")
    images = open_source(str(shared("cifar10", "lossless-test")))
    loaded = load_model("cifar-resnet20", str(weights))
    assert loaded.num_parameters() == 269_722
    labels = np.array([loaded.class_names.index(r.label) for r in images.images])
    accuracy = (predict(loaded, images, workers=2) == labels).mean()
    assert accuracy >= 0.91


def test_cifar_resnet56_loads_strictly():
    loaded = load_model("cifar-resnet56", str(shared("cifar10-resnet", "resnet56-4bfd9763.th")))
    assert loaded.num_parameters() == 853_018


def test_resnet20_all_conv_ingest_on_test_jpeg(tmp_path):
    weights = shared("cifar10-resnet", "resnet20-12fca82f.th")
    source = shared("cifar10", "test-jpeg")
    summary = ingest("cifar-resnet20", str(source), "all-conv", tmp_path, weights=str(weights),
                     params=IngestParams(batch_size=256, workers=2), progress=False, derive=False)
    assert summary["images"] == 10_000 and summary["neurons"] == 16 * 7 + 32 * 6 + 64 * 6
    con = duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM layers").fetchone()[0] == 19
    assert con.execute("SELECT min(n_images), max(n_images) FROM neurons").fetchone() == (10_000, 10_000)
    assert con.execute("SELECT count(*) FROM topk").fetchone()[0] == 688 * 100
    lo, hi = con.execute("SELECT min(sparsity), max(sparsity) FROM neurons").fetchone()
    assert 0 <= lo <= hi <= 1
