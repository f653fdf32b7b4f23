"""Ingest on Ray (neuronindex.jobs.distributed): a local Ray instance started here, a real CIFAR ResNet on
real CIFAR-10 images, pass 1 and pass 2 split over workers, one worker killed mid-shard and the
driver interrupted once; the index must equal a single-process run's, table by table."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from conftest import SHARED

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytestmark = pytest.mark.slow

WEIGHTS = SHARED / "cifar10-resnet" / "resnet20-12fca82f.th"
IMAGES = SHARED / "cifar10" / "lossless-train"
LAYERS = "conv1,conv7,conv13,conv19"
TASK = "ray::neuronindex_pass1"
NF_MEMORY = 8  # MB: pass 2 in several ranges of neurons (about 21 MB of canvases), each split over the workers

TABLES = {  # each table's rows by neuron key, every column the index stores about the neuron
    "topk": "SELECT n.key, t.rank, i.path, t.activation, t.y, t.x, t.box_x0, t.box_y0, t.box_x1, t.box_y1 "
            "FROM topk t JOIN neurons n ON n.id = t.neuron_id JOIN images i ON i.id = t.image_id ORDER BY 1, 2",
    "bottomk": "SELECT n.key, b.rank, i.path, b.activation, b.y, b.x FROM bottomk b JOIN neurons n ON n.id = b.neuron_id "
               "JOIN images i ON i.id = b.image_id ORDER BY 1, 2",
    "statistics": "SELECT key, act_max, act_mean, act_std, sparsity, dead, auc, n_images FROM neurons ORDER BY key",
    "indexes": "SELECT key, color_index, color_name, class_index, top_class, csi, nf_self_response FROM neuron_view "
               "ORDER BY key",
    "histograms": "SELECT n.key, h.n_images, h.density, h.edges, h.counts, h.bucket_counts FROM activation_histograms h "
                  "JOIN neurons n ON n.id = h.neuron_id ORDER BY 1",
    "class means": "SELECT n.key, c.class_id, c.mean_activation FROM class_means c JOIN neurons n ON n.id = c.neuron_id "
                   "ORDER BY 1, 2",
    "classes": "SELECT n.key, c.class_id, c.share, c.rank FROM neuron_classes c JOIN neurons n ON n.id = c.neuron_id "
               "ORDER BY 1, 2",
    "probe": "SELECT n.key, p.activations FROM probe p JOIN neurons n ON n.id = p.neuron_id ORDER BY 1",
}


def _rows(index: Path, sql: str):
    with duckdb.connect(str(index / "index.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def _nfs(index: Path) -> dict:
    from io import BytesIO

    from PIL import Image

    rows = _rows(index, "SELECT n.key, f.nf_png, f.std, f.n_used FROM neuron_features f JOIN neurons n ON n.id = f.neuron_id")
    return {k: (np.asarray(Image.open(BytesIO(png)), dtype=float) if png else None, np.array(std or [], dtype=float), n)
            for k, png, std, n in rows}


def _same(a, b, rtol=1e-6, atol=1e-9) -> bool:
    """Rows equal; floats to float tolerance (sums are added in another order)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if isinstance(u, float) or isinstance(v, float):
                if not (u is None and v is None) and not np.isclose(u, v, rtol=rtol, atol=atol, equal_nan=True):
                    return False
            elif isinstance(u, list) and u and isinstance(u[0], float):
                if not np.allclose(u, v, rtol=rtol, atol=atol):
                    return False
            elif u != v:
                return False
    return True


@pytest.fixture(scope="module")
def local_ray():
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    from neuronindex.jobs.ingest import IngestParams, ingest
    from neuronindex.nets.models import load_model

    index = tmp_path_factory.mktemp("single")
    ingest(load_model("cifar-resnet20", str(WEIGHTS)), str(IMAGES), LAYERS, index, progress=False,
           params=IngestParams(batch_size=64, nf_memory=NF_MEMORY))
    return index


def _kill_once(killed: list, stop: threading.Event) -> None:
    """Kill (SIGKILL) the first Ray worker seen running a pass-1 shard (its process title is set
    when the task starts; the shard has not returned yet)."""
    while not stop.is_set() and not killed:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(TASK.encode()):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.05)


def test_ray_ingest_equals_a_single_process_run(tmp_path, local_ray, single, monkeypatch, capsys):
    from neuronindex.jobs import distributed
    from neuronindex.jobs.ingest import IngestParams
    from neuronindex.nets.models import load_model

    index = tmp_path / "ray"
    loaded = load_model("cifar-resnet20", str(WEIGHTS))
    params = dict(params=IngestParams(batch_size=64, nf_memory=NF_MEMORY), shards=6, progress=True)
    # 1. the driver is interrupted (Ctrl-C) after two shards came back and were saved
    real_write, writes = distributed.write_atomically, []

    def interrupted(path, data):
        if len(writes) == 2:
            raise KeyboardInterrupt
        real_write(path, data)
        writes.append(path)
    monkeypatch.setattr(distributed, "write_atomically", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distributed.ingest_on_ray(loaded, str(IMAGES), LAYERS, index, **params)
    assert not (index / "index.duckdb").exists()
    monkeypatch.setattr(distributed, "write_atomically", real_write)
    # 2. --resume runs the four missing shards only; one of their workers is killed mid-shard and Ray retries it
    killed, stop = [], threading.Event()
    watcher = threading.Thread(target=_kill_once, args=(killed, stop), daemon=True)
    watcher.start()
    capsys.readouterr()
    summary = distributed.ingest_on_ray(loaded, str(IMAGES), LAYERS, index, resume=True, **params)
    stop.set()
    watcher.join()
    shown = capsys.readouterr()
    assert "resuming: 2 of 6 shards already done" in shown.out
    # pass 2 split over the two worker slots too, in each of its ranges
    ranges = set(re.findall(r"pass 2: crops \((\d+)/(\d+)\) on Ray \(2 parts\)", shown.err))
    assert len(ranges) >= 2 and ranges == {(str(i), str(len(ranges))) for i in range(1, len(ranges) + 1)}, shown.err[-3000:]
    assert killed, "no pass-1 worker was seen to kill"
    assert summary["shards"] == 6 and summary["images"] == sum(p.is_file() for p in IMAGES.rglob("*"))
    assert not (index / ".work").exists()  # the saved shards are cleaned up after the publish
    # 3. every table equals the single-process index's
    for name, sql in TABLES.items():
        got = _rows(index, sql)
        # the indexes come from float32 NFs summed over the parts in another order: 1e-5 apart
        tolerance = dict(rtol=1e-4, atol=1e-5) if name == "indexes" else {}
        assert got and _same(got, _rows(single, sql), **tolerance), name
    mine, theirs = _nfs(index), _nfs(single)
    assert mine.keys() == theirs.keys() and len(mine) == 16 + 16 + 32 + 64
    for key, (img, std, n) in mine.items():
        other = theirs[key]
        assert n == other[2], key
        if img is None:
            assert other[0] is None
            continue
        assert np.abs(img - other[0]).max() <= 1, key  # 8-bit PNGs of float NFs summed in the same order
        np.testing.assert_allclose(std, other[1], rtol=1e-5, atol=1e-6)
    emb = ("SELECT n.key, e.space, e.rank, e.vector FROM embeddings e JOIN neurons n ON n.id = e.neuron_id "
           "ORDER BY 1, 2, 3")
    assert _same(_rows(index, emb), _rows(single, emb), rtol=1e-4, atol=1e-5)  # re-forwards in other batches


def test_cli_ray_refuses_what_it_cannot_do(tmp_path, cli_runner):
    from neuronindex_cli.main import cli

    base = ["ingest", "--model", "cifar-resnet20", "--images", str(tmp_path), "--layers", "conv1", "--index",
            str(tmp_path / "i"), "--ray"]
    r = cli_runner.invoke(cli, [*base, "--shard", "0/2", "--state-out", str(tmp_path / "s.npz")])
    assert r.exit_code != 0 and "leave out --shard" in r.output and "Traceback" not in r.output
