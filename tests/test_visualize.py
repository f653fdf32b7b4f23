"""Activation maximisation (seeds 000/003): hand-set detectors, regularisers, seeds, storage."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from neuronindex.jobs import visualize as viz
from neuronindex.science.optvis import objectives
from neuronindex.science.optvis import param
from neuronindex.science.optvis import render


def _unit(loaded, layer_name: str, channels: list[int], params: render.VizParams, window: bool = True):
    """Optimise `channels` of a layer of the tiny CNN for the unit objective, as a stored run does."""
    import torch

    from neuronindex.science.features import crop_geometry
    from neuronindex.nets.layers import trace

    layer = trace(loaded).lookup(layer_name)
    geo = crop_geometry(layer, loaded.preprocessing.input_size, full=not window)
    node = layer.pre_activation or layer.name
    W = torch.eye(layer.channels)[channels]
    obj = objectives.map_objective(params.objective, node, W, torch.zeros(len(channels)), geo["at"],
                                   torch.ones(len(channels)), layer.pre_activation is not None)
    p = params.resolved(loaded.preprocessing.input_size)
    res = render.optimise(render.grad_forward(loaded, [node]), obj, len(channels), geo["size"], p, np.eye(3))
    boxes = []
    for c in channels:
        x0, y0, x1, y1 = layer.field.box(c, *geo["unit"])
        oy, ox = geo["origin"]
        boxes.append((x0 - ox, y0 - oy, x1 - ox, y1 - oy))
    return res, boxes


def _field(image, box):
    x0, y0, x1, y1 = box
    return image[max(y0, 0):y1, max(x0, 0):x1].astype(float)


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_the_optimised_field_of_an_edge_detector_shows_the_edge(tiny_loaded, param):
    """conv1 channel 1 of the tiny CNN is -1/3 on its left column and +1/3 on its right (a
    vertical dark-to-bright edge): the optimised 3x3 field must be dark left, bright right."""
    res, boxes = _unit(tiny_loaded, "relu1", [1], render.VizParams(parameterization=param, steps=64))
    f = _field(res.images[0], boxes[0])
    assert f.shape[:2] == (3, 3)
    left, right = f[:, 0].mean(), f[:, 2].mean()
    assert right - left > 50, (left, right)  # the regularised pixel image is the softer one (~70)
    assert res.activation[0] > 0 and res.trace[0, -1] > res.trace[0, 0]


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_the_optimised_field_of_a_red_detector_is_red(tiny_loaded, param):
    """conv1 channel 0 is R - (G + B) / 2 over a 3x3 field: its field must turn red (R well above
    G and B), although a grey start gives it a negative value (the pre-activation carries it)."""
    res, boxes = _unit(tiny_loaded, "relu1", [0], render.VizParams(parameterization=param, steps=64))
    r, g, b = _field(res.images[0], boxes[0]).reshape(-1, 3).mean(0)
    assert r - max(g, b) > 60, (r, g, b)
    alpha, hue = render.color_stats(res.images[0], boxes[0])
    assert hue is None or min(hue, 360 - hue) < 45  # towards +O1 (red), when the field is not flat


def test_total_variation_regulariser_lowers_total_variation(tiny_loaded):
    """The same pixel optimisation with and without the TV term (no blur, no L2): TV of the result,
    computed by hand on the 8-bit images, is lower with it; and L2 decay pulls the image to grey."""
    base = dict(parameterization="pixel", steps=48, l2=0.0, blur_every=0, objective="channel", init_sd=0.5)

    def tv(img):
        x = img.astype(float) / 255
        return ((x[1:] - x[:-1]) ** 2).mean() + ((x[:, 1:] - x[:, :-1]) ** 2).mean()

    plain, _ = _unit(tiny_loaded, "relu2", [0, 3], render.VizParams(tv=0.0, **base), window=False)
    smooth, _ = _unit(tiny_loaded, "relu2", [0, 3], render.VizParams(tv=20.0, **base), window=False)
    for i in range(2):
        assert tv(smooth.images[i]) < 0.5 * tv(plain.images[i]), (tv(smooth.images[i]), tv(plain.images[i]))
    decayed, _ = _unit(tiny_loaded, "relu2", [0, 3], render.VizParams(**{**base, "tv": 0.0, "l2": 50.0}), window=False)
    for i in range(2):
        spread = lambda im: np.abs(im.astype(float) / 255 - 0.5).mean()  # noqa: E731
        assert spread(decayed.images[i]) < spread(plain.images[i])


def test_runs_are_reproducible_with_a_seed(tiny_loaded):
    p = render.VizParams(steps=16, seed=3)
    a, _ = _unit(tiny_loaded, "relu2", [0, 1, 4], p)
    b, _ = _unit(tiny_loaded, "relu2", [0, 1, 4], p)
    c, _ = _unit(tiny_loaded, "relu2", [0, 1, 4], render.VizParams(steps=16, seed=4))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.trace, b.trace)
    assert not np.array_equal(a.images, c.images)


def test_fourier_image_started_from_a_picture_is_that_picture():
    """The inverse of the Fourier + colour parameterisation: a start image comes back unchanged."""
    import torch

    rng = np.random.default_rng(0)
    start = torch.as_tensor(rng.uniform(0.05, 0.95, (2, 3, 9, 12)), dtype=torch.float32)
    color = param.color_sqrt(rng.normal(0.5, 0.2, (500, 3)) @ np.array([[1, 0.8, 0.6], [0, 0.5, 0.3], [0, 0, 0.2]]))
    img = param.FourierImage(2, 9, 12, color, 1.0, 0.01, torch.Generator().manual_seed(0), start)
    assert torch.allclose(img.rgb(), start, atol=1e-4)


def test_colour_matrix_is_the_square_root_of_the_covariance():
    rng = np.random.default_rng(1)
    mix = np.array([[0.3, 0.1, 0.0], [0.2, 0.2, 0.05], [0.1, 0.1, 0.3]])
    pixels = rng.normal(size=(20000, 3)) @ mix.T + 0.5
    root = param.color_sqrt(pixels)
    cov = np.cov(pixels.T)
    k = np.linalg.norm(root, axis=0).max()  # the scale color_sqrt divides by
    restored = (root * 1.0) @ (root * 1.0).T
    assert np.allclose(restored / restored[0, 0], cov / cov[0, 0], atol=1e-6)
    assert np.allclose(root, root.T) and np.isclose(np.linalg.norm(root, axis=0).max(), 1.0) and k > 0


@pytest.fixture(scope="module")
def colour_classifier():
    from neuronindex.nets.models import Preprocessing, load_model

    return load_model("python:tinymodels:colour_classifier",
                      preprocessing=Preprocessing(input_size=(12, 12), geometry="resize", resize=None,
                                                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))


@pytest.mark.parametrize("kind", ["class", "prob"])
def test_class_objective_paints_the_class_colour(colour_classifier, kind):
    """A hand-set classifier whose class k is the excess of colour channel k: the image optimised
    for each class logit (or probability) is that colour, and the model predicts that class."""
    out = render.output_node(colour_classifier)
    obj = objectives.SumObjective([[objectives.term(kind, 1.0, output=k)] for k in range(3)], out)
    p = render.VizParams(steps=96).resolved((12, 12))
    res = render.optimise(render.grad_forward(colour_classifier, [out]), obj, 3, (12, 12), p, np.eye(3), output_node=out)
    assert list(res.predicted[-1]) == [0, 1, 2]
    assert (res.trace[:, -1] > res.trace[:, 0]).all()
    for k in range(3):
        mean = res.images[k].reshape(-1, 3).astype(float).mean(0)
        assert mean[k] - np.delete(mean, k).max() > 60, (k, mean)


def test_a_weighted_sum_of_objectives_is_the_sum_of_its_terms(colour_classifier):
    """seed 000's composite objective: 2 * red logit - 1 * blue logit + 0.5 * layer mean, evaluated
    on an image, equals the same sum computed by hand from one forward."""
    import torch

    out = render.output_node(colour_classifier)
    node = "relu"
    terms = [objectives.ClassTerm(2.0, output=0), objectives.ClassTerm(-1.0, output=2), objectives.LayerTerm(0.5, node=node),
             objectives.UnitTerm(1.0, node=node, vector=np.array([0.0, 1.0, 0.0]), at=(3, 4))]
    obj = objectives.SumObjective([terms], out)
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    maps = render.grad_forward(colour_classifier, obj.nodes)(x)
    m = colour_classifier.module
    z = m.relu(m.conv(colour_classifier.preprocessing.normalize_float(x)))
    logits = m(colour_classifier.preprocessing.normalize_float(x))[0]
    by_hand = 2 * logits[0] - logits[2] + 0.5 * z.mean() + z[0, 1, 3, 4]
    assert float(obj.value(maps)[0]) == pytest.approx(float(by_hand), rel=1e-5)


def test_a_start_image_flips_to_the_target_class_and_keeps_its_difference(colour_classifier):
    """Seed 000 section 2.1: from a real image towards another class, small pixel steps, no
    transformations; the flip step is the first at which the model predicts the target."""
    import torch

    rng = np.random.default_rng(0)
    start = torch.as_tensor(rng.uniform(0.3, 0.5, (1, 3, 12, 12)), dtype=torch.float32)
    start[:, 0] += 0.15  # a reddish picture: class 0
    out = render.output_node(colour_classifier)
    module = colour_classifier.module
    before = int(module(colour_classifier.preprocessing.normalize_float(start)).argmax())
    assert before == 0
    target = 2
    # the probability: raising the blue logit alone leaves red ahead (seed 000 had two classes)
    obj = objectives.SumObjective([[objectives.ProbTerm(1.0, output=target)]], out)
    p = render.start_params(render.VizParams(steps=128)).resolved((12, 12))
    res = render.optimise(render.grad_forward(colour_classifier, [out]), obj, 1, (12, 12), p, np.eye(3), start=start,
                       output_node=out)
    flips = render.flip_step(res.predicted[:, 0], target)
    assert flips is not None and res.predicted[flips, 0] == target and (res.predicted[:flips, 0] != target).all()
    assert res.predicted[0, 0] == before
    change = res.images[0].astype(float) / 255 - start[0].permute(1, 2, 0).numpy()
    assert change[..., 2].mean() > 0 > change[..., 0].mean()  # more blue, less red


# ------------------------------------------------------------------ stored runs

@pytest.fixture(scope="module")
def viz_index(tmp_path_factory, tiny_loaded):
    from conftest import write_folder
    from neuronindex.jobs.ingest import IngestParams, ingest

    root = tmp_path_factory.mktemp("viz")
    write_folder(root / "images", per_class=6)
    ingest(tiny_loaded, str(root / "images"), "conv1,conv2", root / "index", params=IngestParams(top_k=6),
           progress=False)
    return root / "index"


def test_visualize_fills_every_live_neuron_and_the_ratio_is_a_direct_forward(viz_index, tiny_loaded):
    import torch
    from PIL import Image

    import neuronindex

    done = viz.visualize_layers(viz_index, ["conv1"], params=render.VizParams(steps=24), progress=False)
    with neuronindex.open(viz_index) as idx:
        live = idx.sql("SELECT key, act_max FROM neuron_view WHERE layer = 'conv1' AND NOT dead ORDER BY channel").rows()
        dead = idx.sql("SELECT key FROM neuron_view WHERE layer = 'conv1' AND dead").rows()
        rows = {r["target"]: r for r in idx.visualizations(kind="neurons").rows()}
        assert done["optimised"] == len(live) and set(rows) == {r["key"] for r in live}
        assert dead and not any(d["key"] in rows for d in dead)  # channel 2 never fires
        view = {r["key"]: r for r in idx.sql("SELECT key, viz_activation_ratio, viz_objective FROM neuron_view "
                                             "WHERE layer = 'conv1'").rows()}
        for r in live:
            row = rows[r["key"]]
            img = np.array(Image.open(io.BytesIO(idx.viz_png(r["key"]))).convert("RGB"))
            assert img.shape[:2] == (row["height"], row["width"]) == (3, 3)  # conv1's 3x3 field window
            # brute force: the stored image placed in a grey (mean) input, the full model's conv1
            x = torch.full((1, 3, 16, 16), 0.5)
            oy, ox = 7, 7  # the centre unit (8, 8) of a 16x16 map with a 3x3 field starts at 7
            x[0, :, oy:oy + 3, ox:ox + 3] = torch.as_tensor(img).permute(2, 0, 1).float() / 255
            a = torch.relu(tiny_loaded.module.conv1(tiny_loaded.preprocessing.normalize_float(x)))
            channel = int(r["key"].rsplit("/", 1)[1])
            by_hand = float(a[0, channel, 8, 8]) / r["act_max"]
            assert row["activation_ratio"] == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
            assert view[r["key"]]["viz_activation_ratio"] == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
            assert view[r["key"]]["viz_objective"] == "unit"
            assert row["trace_steps"] == [0, 24] and len(row["trace"]) == 2
            assert json.loads(row["parameters"])["steps"] == 24


def test_visualize_is_idempotent_and_resumable(viz_index, monkeypatch):
    import neuronindex

    p = render.VizParams(steps=8, seed=7, batch_size=2)
    first = viz.visualize_layers(viz_index, ["conv2"], params=p, progress=False)
    with neuronindex.open(viz_index) as idx:
        before = {r["target"]: (r["id"], r["trace"]) for r in idx.visualizations(kind="neurons").rows()
                  if "/relu2/" in r["target"] or "/conv2/" in r["target"]}
    again = viz.visualize_layers(viz_index, ["conv2"], params=p, progress=False)
    assert again["optimised"] == 0 and again["skipped"] == first["optimised"] > 2
    with neuronindex.open(viz_index) as idx:
        after = {r["target"]: (r["id"], r["trace"]) for r in idx.visualizations(kind="neurons").rows()
                 if r["target"] in before}
    assert after == before
    # interrupted after one batch (published at once): the rerun does only the rest
    calls = {"n": 0}
    real = viz._run_units

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    q = render.VizParams(steps=8, seed=8, batch_size=2)
    monkeypatch.setattr(viz, "_run_units", failing)
    with pytest.raises(KeyboardInterrupt):
        viz.visualize_layers(viz_index, ["conv2"], params=q, progress=False, checkpoint_every=0)
    monkeypatch.setattr(viz, "_run_units", real)
    rest = viz.visualize_layers(viz_index, ["conv2"], params=q, progress=False)
    assert rest["skipped"] == 2 and rest["optimised"] == first["optimised"] - 2
    with neuronindex.open(viz_index) as idx:
        seeds = {r["seed"] for r in idx.visualizations(kind="neurons").rows() if r["target"] in before}
    assert seeds == {8}  # new options replace the old images, one row per target and objective


def test_visualize_cli_api_and_http(viz_index, cli_runner, tmp_path):
    from fastapi.testclient import TestClient

    import neuronindex
    from cli.main import cli
    from neuronindex.service.app import create_app

    for objective in ("unit", "channel"):
        r = cli_runner.invoke(cli, ["visualize", str(viz_index), "--layers", "conv1", "--steps", "8", "--objective",
                                    objective, "--classes", "dataset", "-q"])
        assert r.exit_code == 0, r.output
        assert r.output.startswith("optimised ")
    bad = cli_runner.invoke(cli, ["visualize", str(viz_index), "--layers", "conv9", "-q"])
    assert bad.exit_code != 0 and bad.output.startswith("Error: ") and "conv9" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    for args, word in ((["--steps", "0"], "--steps"), (["--classes", "0"], "--classes"), (["--jitter", "-1"], "--jitter"),
                       (["--start", "nowhere.png", "--classes", "output 1"], "nowhere.png"),
                       (["--start", "nowhere.png"], "--start needs one class")):
        bad = cli_runner.invoke(cli, ["visualize", str(viz_index), *args, "-q"])
        assert bad.exit_code != 0 and word in bad.output and "Traceback" not in bad.output, (args, bad.output)
    with neuronindex.open(viz_index) as idx:
        key = idx.sql("SELECT key FROM neuron_view WHERE layer = 'conv1' AND NOT dead LIMIT 1").rows()[0]["key"]
        objectives = {r["objective"] for r in idx.neuron(key).visualizations().rows()}
        assert {"unit", "channel"} <= objectives
        assert idx.neuron(key).viz_image("channel").size == (16, 16)  # the channel objective: the whole input
        classes = idx.visualizations(kind="classes").rows()
        # the tiny CNN names no outputs and its classes (red, green, blue) match none: every output
        assert {c["target"] for c in classes} == {"class:output 0", "class:output 1", "class:output 2"}
        found = idx.search("viz>0 conv1").rows()
        assert found and all(f["viz_activation_ratio"] > 0 for f in found)
    client = TestClient(create_app(viz_index))
    png = client.get(f"/api/neurons/{key}/viz.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert client.get(f"/api/neurons/{key}/viz.png?objective=channel").content != png.content
    missing = client.get("/api/neurons/tiny_cnn/conv1/2/viz.png")
    assert missing.status_code == 404 and missing.json()["ok"] is False
    payload = client.get(f"/api/neurons/{key}").json()
    assert {v["objective"] for v in payload["visualizations"]} >= {"unit", "channel"}
    page = client.get(f"/neuron/{key}").text
    assert "optimised image (unit objective)" in page and "/api/visualizations/" in page
    grid = client.get("/layer/tiny_cnn/conv1?show=viz").text
    assert f"/api/neurons/{key}/viz.png" in grid
    model = client.get("/model/tiny_cnn").text
    assert "what each class looks like" in model and "/api/visualizations/" in model
    listed = client.get("/api/visualizations?kind=classes").json()["rows"]
    assert len(listed) == 3 and client.get(f"/api/visualizations/{listed[0]['id']}.png").status_code == 200
    out = tmp_path / "sheet.html"
    with neuronindex.open(viz_index) as idx:
        idx.export("conv1", "html", out)
    assert "optimised image" in out.read_text()


def test_an_image_does_not_depend_on_the_batch_it_was_made_in(tiny_loaded):
    """Each image has its own seed (run seed + target), so a neuron's image is the same whether it
    was optimised alone or beside others, which is what lets a resumed run skip stored images."""
    import torch

    from neuronindex.science.features import crop_geometry
    from neuronindex.nets.layers import trace

    layer = trace(tiny_loaded).lookup("relu2")
    geo = crop_geometry(layer, tiny_loaded.preprocessing.input_size)
    p = render.VizParams(steps=12).resolved(tiny_loaded.preprocessing.input_size)
    fwd = render.grad_forward(tiny_loaded, [layer.pre_activation])

    def images(channels):
        obj = objectives.UnitObjective(layer.pre_activation, torch.eye(6)[channels], torch.zeros(len(channels)),
                                       geo["at"], torch.ones(len(channels)), True)
        seeds = [render.image_seed(0, f"key/{c}") for c in channels]
        return render.optimise(fwd, obj, len(channels), geo["size"], p, np.eye(3), seeds=seeds).images

    together = images([0, 1, 3, 4])
    alone = np.concatenate([images([c]) for c in (0, 1, 3, 4)])
    assert np.abs(together.astype(int) - alone.astype(int)).max() <= 1  # float rounding of a batched conv at most


def test_redirected_relu_keeps_values_and_lets_a_dead_start_move():
    """The redirected ReLU's values are relu(x); its gradient is ReLU's wherever that reaches the
    input, and otherwise passes except where it would push a negative unit further down."""
    import torch

    from neuronindex.nets.extract import redirected_relu

    x = torch.tensor([[-1.0, 2.0, -3.0]], requires_grad=True)
    y = redirected_relu(x)
    assert torch.equal(y, torch.relu(x))
    (y * torch.tensor([[1.0, 1.0, 1.0]])).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 0.0]]  # a live unit: ReLU's own gradient
    x.grad = None
    dead = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    (-redirected_relu(dead) * torch.tensor([[1.0, -1.0]])).sum().backward()
    # loss gradient -1 (raising unit 0 lowers the loss): passes; +1 would push unit 1 lower: blocked
    assert dead.grad.tolist() == [[-1.0, 0.0]]


def test_ingest_visualize_option(tmp_path, image_folder, cli_runner):
    import neuronindex
    from cli.main import cli

    index = tmp_path / "index"
    r = cli_runner.invoke(cli, ["ingest", "--model", "python:tinymodels:tiny_cnn", "--input-size", "16", "16",
                                "--resize-policy", "resize", "--images", str(image_folder), "--layers", "conv1",
                                "--index", str(index), "--top-k", "4", "--visualize", "8", "-q"])
    assert r.exit_code == 0, r.output
    assert "optimised images of 3 neurons" in r.output  # channel 2 of conv1 is dead
    with neuronindex.open(index) as idx:
        assert idx.sql("SELECT count(viz_activation_ratio) AS n FROM neuron_view").rows()[0]["n"] == 3


def test_optimised_images_in_a_real_browser(viz_index, tmp_path):
    """The neuron page shows the optimised image beside the NF, the layer grid shows them all and
    the model page the class images: every image loads (no broken image) in Chromium."""
    from neuronindex.service.app import create_app
    from test_service import CHROMIUM, RealServer

    if CHROMIUM is None:
        import os

        if os.environ.get("CI"):
            raise AssertionError("CI needs Debian's chromium")
        pytest.skip("Debian chromium is not installed")
    viz.visualize_layers(viz_index, ["conv1"], params=render.VizParams(steps=8), classes="dataset", progress=False)
    from playwright.sync_api import sync_playwright

    def loaded(page, selector):
        page.wait_for_load_state("networkidle")
        return page.eval_on_selector_all(selector, "els => els.map(e => e.complete ? e.naturalWidth : 0)")

    with RealServer(create_app(viz_index)) as server, sync_playwright() as p:
        base = server.base
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(base + "/neuron/tiny_cnn/conv1/0")
        widths = loaded(page, "img#nf, img.viz")
        assert len(widths) >= 2 and all(w > 0 for w in widths), widths
        assert "optimised image (unit objective)" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "neuron.png"), full_page=True)
        page.goto(base + "/layer/tiny_cnn/conv1?show=viz")
        widths = loaded(page, "img.viz")
        assert len(widths) == 3 and all(w > 0 for w in widths), widths  # the three live neurons
        assert "dead" in page.inner_text("body")  # channel 2 says so instead of a broken image
        page.goto(base + "/model/tiny_cnn")
        widths = loaded(page, "img.viz")
        assert len(widths) == 3 and all(w > 0 for w in widths), widths
        browser.close()


def test_a_direction_objective_is_its_projection_by_hand():
    """A direction (seed 001) is optimised like a neuron: its map is w . a + offset over the layer's
    channels; unit = that map at the unit, channel = its mean, activation = its spatial maximum."""
    import torch

    rng = np.random.default_rng(0)
    a = torch.as_tensor(rng.normal(size=(2, 5, 4, 6)), dtype=torch.float32)
    w = rng.normal(size=(2, 5))
    off = np.array([0.3, -1.2])
    maps = np.einsum("bchw,bc->bhw", a.numpy(), w) + off[:, None, None]
    for kind in ("unit", "channel"):
        obj = objectives.map_objective(kind, "n", torch.as_tensor(w, dtype=torch.float32),
                                       torch.as_tensor(off, dtype=torch.float32), (2, 3), torch.ones(2))
        value = obj.value({"n": a}).numpy()
        expected = maps[:, 2, 3] if kind == "unit" else maps.reshape(2, -1).mean(1)
        assert np.allclose(value, expected, atol=1e-5)
        act = obj.activation({"n": a}).numpy()
        assert np.allclose(act, maps[:, 2, 3] if kind == "unit" else maps.reshape(2, -1).max(1), atol=1e-5)


def test_the_differentiable_forward_is_the_model_in_eval_mode():
    """The forward images are optimised through gives the maps the index was made with: on a
    network with BatchNorm (cifar-resnet20, seeded weights, BN statistics set away from 0/1) and
    in-place ReLUs, every selected map equals the inference forward's, image by image."""
    import torch

    from neuronindex.nets.extract import Extractor
    from neuronindex.nets.models import load_model

    loaded = load_model("cifar-resnet20")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in loaded.module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    nodes = ["relu", "layer2.0.relu1", "layer3.2.add"]
    ex = Extractor(loaded, nodes)
    u8 = torch.randint(0, 256, (3, 32, 32, 3), generator=g, dtype=torch.uint8)
    want = ex(u8)
    got = ex.differentiable(u8.permute(0, 3, 1, 2).float() / 255)
    for n in nodes:
        assert torch.allclose(got[n], want[n], atol=1e-5), n
    one = ex.differentiable(u8[:1].permute(0, 3, 1, 2).float() / 255)  # batch statistics would differ here
    assert torch.allclose(one["relu"][0], want["relu"][0], atol=1e-5)
