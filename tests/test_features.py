"""Pass 2: crops, Neuron Features, masks, sprites, self-response, recomputation."""
from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest
from PIL import Image

from neuronindex.science import features
from neuronindex.data import open_source
from neuronindex.jobs.ingest import IngestParams, ingest
from neuronindex.nets.models import Preprocessing
from neuronindex_cli.main import cli

NONE = Preprocessing(input_size=(4, 4), geometry="none", resize=None, mean=(0.5,) * 3, std=(0.25,) * 3)


def _images(tmp_path, arrays):
    for i, a in enumerate(arrays):
        Image.fromarray(a.astype(np.uint8)).save(tmp_path / f"{i}.png")
    return open_source(str(tmp_path))


def test_nf_is_the_hand_computed_weighted_mean(tmp_path):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (4, 4, 3)) for _ in range(3)]
    images = _images(tmp_path, arrays)
    acts = np.array([10.0, 8.0, 6.5])
    w = acts / acts[0]  # 1, 0.8, 0.65: the third is below the 0.7 threshold
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 4, 4]])
    plan = features.CropPlan(neuron=np.zeros(3, int), rank=np.arange(3), image=np.arange(3), box=boxes, weight=w,
                             sizes=np.array([[2, 2]]), nf_max=100, threshold=0.7)
    (nf,) = features.compute(plan, images, NONE, progress=False)
    c0 = arrays[0][0:2, 0:2].astype(float)
    c1 = arrays[1][1:3, 1:3].astype(float)
    expected = (1.0 * c0 + 0.8 * c1) / 1.8
    np.testing.assert_allclose(nf.nf, expected, rtol=1e-5)
    assert nf.n_used == 2 and nf.valid.all()
    weighted_var = (1.0 * (c0 - expected) ** 2 + 0.8 * (c1 - expected) ** 2) / 1.8
    np.testing.assert_allclose(nf.std, np.sqrt(weighted_var).mean(-1), rtol=1e-4)
    assert nf.sprite_n == 3 and nf.sprite.shape == (2, 6, 3)
    np.testing.assert_array_equal(nf.sprite[:, 4:6], arrays[2][2:4, 2:4])


def test_corner_unit_is_padded_and_masked(tmp_path):
    a = np.full((4, 4, 3), 200, np.uint8)
    b = np.full((4, 4, 3), 100, np.uint8)
    images = _images(tmp_path, [a, b])
    # image 0: field of a corner unit crossing the top-left border; image 1: fully inside
    boxes = np.array([[-1, -1, 2, 2], [0, 0, 3, 3]])
    plan = features.CropPlan(neuron=np.zeros(2, int), rank=np.arange(2), image=np.arange(2), box=boxes,
                             weight=np.array([1.0, 1.0]), sizes=np.array([[3, 3]]))
    (nf,) = features.compute(plan, images, NONE, progress=False)
    assert nf.valid.all()
    # padding never counts: the first row/column only saw image 1
    np.testing.assert_allclose(nf.nf[0, :, 0], 100)
    np.testing.assert_allclose(nf.nf[:, 0, 0], 100)
    np.testing.assert_allclose(nf.nf[1:, 1:, 0], 150)
    assert nf.std[0, 0] == 0 and nf.std[1, 1] == pytest.approx(50)
    # alone, the corner crop leaves the padded pixels invalid (alpha 0 in the PNG)
    plan1 = features.CropPlan(neuron=np.zeros(1, int), rank=np.zeros(1, int), image=np.zeros(1, int),
                              box=boxes[:1], weight=np.array([1.0]), sizes=np.array([[3, 3]]))
    (alone,) = features.compute(plan1, images, NONE, progress=False)
    assert alone.valid.tolist() == [[False, False, False], [False, True, True], [False, True, True]]
    assert np.isnan(alone.std[0, 0])
    png = np.asarray(Image.open(__import__("io").BytesIO(alone.png())))
    assert png[0, 0, 3] == 0 and png[1, 1, 3] == 255 and png[1, 1, 0] == 200
    assert alone.sprite[0, 0].tolist() == [128, 128, 128]  # padding shown grey in the sprite


def _brute_force(arrays, plan, h, w):
    """NF, valid and std of neuron 0 by plain numpy: pad each image, slice the box, mask, average."""
    big = max(h, w)
    wsum = np.zeros((h, w))
    wimg = np.zeros((h, w, 3))
    wimg2 = np.zeros((h, w, 3))
    for j in np.nonzero(plan.use_nf)[0]:
        a = arrays[plan.image[j]].astype(float)
        padded = np.pad(a, ((big, big), (big, big), (0, 0)))
        seen = np.pad(np.ones(a.shape[:2]), big)
        x0, y0 = plan.box[j, :2] + big
        crop, m = padded[y0:y0 + h, x0:x0 + w], seen[y0:y0 + h, x0:x0 + w] * plan.weight[j]
        wsum += m
        wimg += crop * m[..., None]
        wimg2 += crop ** 2 * m[..., None]
    valid = wsum > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        nf = np.where(valid[..., None], wimg / wsum[..., None], 0)
        std = np.where(valid, np.sqrt(np.maximum(wimg2 / wsum[..., None] - nf ** 2, 0)).mean(-1), np.nan)
    return nf, valid, std


@pytest.mark.parametrize("size", [(3, 5), (11, 13)], ids=["inside", "larger-than-the-image"])
def test_nf_equals_brute_force_over_batches(tmp_path, size):
    """Random boxes on 8x8 images, many crossing the border (or covering the whole image), several
    decoded batches: NF, validity and std equal a plain numpy computation."""
    rng = np.random.default_rng(7)
    arrays = [rng.integers(0, 256, (8, 8, 3)) for _ in range(9)]
    images = _images(tmp_path, arrays)
    h, w = size
    n = 30
    y0, x0 = rng.integers(-h + 1, 8, n), rng.integers(-w + 1, 8, n)
    boxes = np.stack([x0, y0, x0 + w, y0 + h], 1)
    weight = np.sort(rng.uniform(0.5, 1.0, n))[::-1]
    plan = features.CropPlan(neuron=np.zeros(n, int), rank=np.arange(n), image=rng.integers(0, 9, n), box=boxes,
                             weight=weight, sizes=np.array([[h, w]]), nf_max=25, threshold=0.6)
    pre = Preprocessing(input_size=(8, 8), geometry="none", resize=None, mean=(0.5,) * 3, std=(0.25,) * 3)
    (nf,) = features.compute(plan, images, pre, batch_size=2, progress=False)
    expected, valid, std = _brute_force(arrays, plan, h, w)
    assert nf.n_used == int(plan.use_nf.sum()) and nf.sprite_n == features.SPRITE_CROPS
    np.testing.assert_array_equal(nf.valid, valid)
    np.testing.assert_allclose(nf.nf, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(nf.std[valid], std[valid], rtol=1e-4, atol=1e-3)
    assert np.isnan(nf.std[~valid]).all()


def test_canvases_of_image_parts_merge_into_the_whole(tmp_path):
    """A split pass 2 (each part of the images summed on its own, as Ray workers do) merged with
    Chan's update gives the NF, std and sprites of one pass over all images (and the brute force)."""
    rng = np.random.default_rng(11)
    arrays = [rng.integers(0, 256, (8, 8, 3)) for _ in range(9)]
    images = _images(tmp_path, arrays)
    h, w, n = 5, 6, 40
    y0, x0 = rng.integers(-h + 1, 8, n), rng.integers(-w + 1, 8, n)
    neuron = np.repeat([0, 1], n // 2)
    plan = features.CropPlan(neuron=neuron, rank=np.tile(np.arange(n // 2), 2), image=rng.integers(0, 9, n),
                             box=np.stack([x0, y0, x0 + w, y0 + h], 1), weight=np.tile(np.linspace(1, 0.5, n // 2), 2),
                             sizes=np.array([[h, w], [h, w]]), nf_max=25, threshold=0.6)
    pre = Preprocessing(input_size=(8, 8), geometry="none", resize=None, mean=(0.5,) * 3, std=(0.25,) * 3)
    whole = features.compute(plan, images, pre, batch_size=2, progress=False)
    parts = [features.compute(plan, images, pre, batch_size=2, progress=False, subset=[p for p in range(9) if p % 3 == r],
                              partial=True) for r in range(3)]
    merged = parts[0]
    for other in parts[1:]:
        merged.merge(other.sums, other.sprites)
    split = features.finish_canvases(merged, plan, (0, 2))
    for k, (a, b) in enumerate(zip(split, whole)):
        np.testing.assert_array_equal(a.valid, b.valid)
        np.testing.assert_allclose(a.nf, b.nf, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(a.std[a.valid], b.std[b.valid], rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(a.sprite, b.sprite)
        assert a.n_used == b.n_used
        one = features.CropPlan(neuron=np.zeros(n // 2, int), rank=plan.rank[neuron == k], image=plan.image[neuron == k],
                                box=plan.box[neuron == k], weight=plan.weight[neuron == k], sizes=np.array([[h, w]]),
                                nf_max=25, threshold=0.6)
        expected, valid, std = _brute_force(arrays, one, h, w)
        np.testing.assert_allclose(a.nf, expected, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(a.std[valid], std[valid], rtol=1e-4, atol=1e-3)


def test_sprite_thumbnails_average_areas_and_show_padding_grey(tmp_path):
    """A 96x96 field on a 64x64 image shrinks to a 48x48 thumbnail: each pixel the mean of a 2x2
    block, grey 128 where the block is padding."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (64, 64, 3))
    images = _images(tmp_path, [a])
    plan = features.CropPlan(neuron=np.zeros(1, int), rank=np.zeros(1, int), image=np.zeros(1, int),
                             box=np.array([[-16, -32, 80, 64]]), weight=np.array([1.0]), sizes=np.array([[96, 96]]))
    pre = Preprocessing(input_size=(64, 64), geometry="none", resize=None, mean=(0.5,) * 3, std=(0.25,) * 3)
    (nf,) = features.compute(plan, images, pre, progress=False)
    canvas = np.full((96, 96, 3), 128.0)
    canvas[32:96, 16:80] = a
    expected = np.floor(canvas.reshape(48, 2, 48, 2, 3).mean((1, 3)) + 0.5)
    assert nf.sprite.shape == (48, 48, 3)
    np.testing.assert_array_equal(nf.sprite, expected)
    assert (nf.sprite[:16] == 128).all()  # the top third of the field lies above the image


@pytest.fixture(scope="module")
def index(tmp_path_factory, image_folder, tiny_loaded):
    path = tmp_path_factory.mktemp("feat")
    ingest(tiny_loaded, str(image_folder), "conv1,conv2", path, params=IngestParams(top_k=6, batch_size=5), progress=False)
    return path


def _con(path):
    return duckdb.connect(str(path / "index.duckdb"), read_only=True)


def test_red_detector_nf_is_red(index):
    import neuronindex

    with neuronindex.open(index) as idx:
        red = np.asarray(idx.neuron("tiny_cnn/conv1/0").nf_image().convert("RGB")).reshape(-1, 3).mean(0)
        assert red[0] > 180 and red[1] < 80 and red[2] < 80
        # the dead channel has no NF
        with pytest.raises(neuronindex.NeuronIndexError, match="no Neuron Feature"):
            idx.neuron("tiny_cnn/conv1/2").nf_image()


def test_self_response_is_the_forward_on_the_placed_nf(index, tiny_loaded):
    import torch

    import neuronindex

    with neuronindex.open(index) as idx:
        n = idx.neuron("tiny_cnn/conv1/0")
        nf = np.asarray(n.nf_image()).astype(np.float32)
    pre = tiny_loaded.preprocessing
    x = torch.zeros(1, 3, 16, 16)
    img = (torch.from_numpy(nf[..., :3]).permute(2, 0, 1) / 255 - 0.5) / 0.25
    x[0, :, 7:10, 7:10] = img  # the field of the central unit (8, 8)
    with torch.no_grad():
        a = torch.relu(tiny_loaded.module.conv1(x))[0, 0, 8, 8].item()
    expected = a / n.row["act_max"]
    assert n.row["nf_self_response"] == pytest.approx(expected, rel=1e-2)  # NF PNG is rounded to 8 bits
    assert expected > 0.5
    del pre


def test_in_nf_flags_and_stored_std(index):
    con = _con(index)
    for key, nf_n, in_nf in con.execute(
            "SELECT n.key, n.nf_n, count(*) FILTER (WHERE t.in_nf) FROM neurons n JOIN topk t ON t.neuron_id = n.id "
            "GROUP BY 1, 2").fetchall():
        assert (nf_n or 0) == in_nf, key
    h, w, std = con.execute("SELECT height, width, std FROM neuron_features f JOIN neurons n ON n.id = f.neuron_id "
                            "WHERE n.key = 'tiny_cnn/conv2/0'").fetchone()
    assert (h, w) == (8, 8) and len(std) == 64


def test_recompute_with_another_threshold(tmp_path, image_folder, tiny_loaded, cli_runner):
    import shutil

    from conftest import HERE

    path = tmp_path / "re"
    ingest(tiny_loaded, str(image_folder), "conv1", path, params=IngestParams(top_k=6), progress=False)
    before = dict(_con(path).execute("SELECT key, nf_n FROM neurons").fetchall())
    import sys

    sys.path.insert(0, str(HERE))
    r = cli_runner.invoke(cli, ["features", str(path), "--nf-threshold", "0.99", "-q"])
    assert r.exit_code == 0, r.output
    after = dict(_con(path).execute("SELECT key, nf_n FROM neurons").fetchall())
    assert all(after[k] <= before[k] for k in before if before[k]) and after != before
    params = json.loads(_con(path).execute("SELECT parameters FROM ingests").fetchone()[0])
    assert params["nf_threshold"] == 0.99
    r = cli_runner.invoke(cli, ["features", str(path), "--model", "nope"])
    assert r.exit_code == 3 and "no model 'nope' in this index; it has tiny_cnn" in r.output
    shutil.rmtree(path)


def test_show_and_neuron_commands(index, cli_runner, tmp_path):
    out = tmp_path / "n.png"
    r = cli_runner.invoke(cli, ["show", str(index), "tiny_cnn/conv2/1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size[0] >= 96
    r = cli_runner.invoke(cli, ["neuron", str(index), "tiny_cnn/conv2/1", "--format", "json", "--topk"])
    row = json.loads(r.output)
    assert row["key"] == "tiny_cnn/conv2/1" and len(row["topk"]) == 6 and row["topk"][0]["rank"] == 1
    r = cli_runner.invoke(cli, ["neuron", str(index), "tiny_cnn/conv2/77"])
    assert r.exit_code == 3 and "did you mean" in r.output


class _RandomNF:
    def __init__(self, h, w, rng):
        self.nf = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        self.valid = np.ones((h, w), bool)
        self.valid[0, 0] = False  # a pixel of the field no crop saw
        self.n_used = 3


@pytest.mark.parametrize("spec, size, aliases", [
    ("cifar-resnet20", 32, ["conv1", "conv8", "conv19"]),  # late fields cross the 32 px border
    ("timm:resnet18?output_stride=8", 160, ["conv1", "conv7", "conv12"]),  # max pool, stride 2, dilation
])
def test_self_response_on_a_field_sized_window_equals_the_full_input(spec, size, aliases):
    """NF self-response runs each layer on a window just holding its central unit's field (stride-
    aligned); it must give the activation of the full-size input with the NF at the same place."""
    from neuronindex.nets.extract import Extractor
    from neuronindex.nets.layers import Selection, trace
    from neuronindex.nets.models import load_model

    loaded = load_model(spec)
    loaded.preprocessing = Preprocessing(input_size=(size, size), geometry="resize", resize=None)
    graph = trace(loaded)
    selections = [Selection(a, graph.lookup(a)) for a in aliases]
    rng = np.random.default_rng(0)
    owners = [(li, c) for li, s in enumerate(selections) for c in range(0, s.layer.channels, 7)]
    feats = [_RandomNF(*selections[li].layer.field.sizes()[c].astype(int), rng) for li, c in owners]
    act_max = [np.ones(s.layer.channels) for s in selections]
    fast = features.self_response(Extractor(loaded, [s.layer.name for s in selections]), selections, owners, feats,
                                  act_max, loaded.preprocessing, batch_size=5, progress=False)
    for i, (li, c) in enumerate(owners):
        layer = selections[li].layer
        window = features.crop_geometry(layer, (size, size))
        assert window["size"][0] <= size and window["origin"][0] % int(layer.field.stride[0]) == 0
        full = features._nf_forward(Extractor(loaded, [layer.name]), layer, [i], owners, feats, loaded.preprocessing,
                                    features.crop_geometry(layer, (size, size), full=True))[0]
        assert fast[i] == pytest.approx(full, rel=1e-4, abs=1e-5), (layer.name, c)
