"""Issue 24: activation histograms (pass 1), whole-image context heatmaps and deconvnet
reconstructions, checked against brute force and hand computations on hand-set networks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_folder


@pytest.fixture(scope="module")
def edge_index(tmp_path_factory, tiny_loaded):
    """The tiny hand-set CNN over coloured squares plus three images with one vertical step edge
    (dark left, bright right) at known columns: conv1 channel 1 is a vertical edge detector."""
    from PIL import Image

    from neuronindex.jobs.ingest import IngestParams, ingest

    root = tmp_path_factory.mktemp("edges")
    write_folder(root / "images", per_class=4)
    (root / "images" / "edge").mkdir()
    for i, col in enumerate((5, 8, 11)):
        img = np.full((16, 16, 3), 40, np.uint8)
        img[:, col:] = 230
        Image.fromarray(img).save(root / "images" / "edge" / f"{i:03d}.png")
    ingest(tiny_loaded, str(root / "images"), "conv1,conv2", root / "index", params=IngestParams(top_k=6, bottom_k=3),
           progress=False)
    return root / "index"


def _brute(index_dir, node: str) -> tuple[np.ndarray, list[str]]:
    """(images, channels) spatial maxima of `node` over every image of the index, by a plain forward."""
    import neuronindex
    from neuronindex.nets.models import Preprocessing

    with neuronindex.open(index_dir) as idx:
        net = idx.network(None, node)
        loaded, extractor = net.loaded, net.extractor
        paths = [r["path"] for r in idx.query("SELECT path FROM images ORDER BY position").rows()]
        pre = Preprocessing.from_json(idx.query("SELECT preprocessing FROM models").rows()[0]["preprocessing"])
        batch = torch.from_numpy(np.stack([np.asarray(pre.geometric(idx.load_image(p, ""))) for p in paths]))
        maps = extractor(batch)[node]
    return maps.amax((2, 3)).numpy().astype(np.float64), paths


def test_histogram_buckets_match_a_hand_computation():
    from neuronindex.science.stats import HIST_BUCKETS, HIST_ZERO, bucket_edges, bucket_values, hist_buckets

    v = np.array([0.0, 1.0, 1.05, 1.124, 1.125, 1.2, -1.0, -3.0, 1e-40, 1e40, 2.0 ** -20, 0.75])
    b = hist_buckets(torch.tensor(v)).numpy()
    # positive bucket Z + 1 + p holds 2^e (1 + j/8) <= v < 2^e (1 + (j+1)/8), e = -20 + p // 8, j = p % 8
    one = HIST_ZERO + 1 + 20 * 8  # [1, 1.125): e = 0, j = 0
    assert b[0] == HIST_ZERO
    assert list(b[1:6]) == [one, one, one, one + 1, one + 1]  # 1.125 starts [1.125, 1.25), as does 1.2
    assert b[6] == 2 * HIST_ZERO - one  # -1.0 mirrors 1.0
    assert b[7] == 2 * HIST_ZERO - (one + 8 + 4)  # 3 = 2^1 (1 + 4/8)
    assert b[8] == HIST_ZERO + 1 and b[9] == HIST_BUCKETS - 1  # clipped at both ends (1e40 is inf in float32)
    assert b[10] == HIST_ZERO + 1 and b[11] == one - 8 + 4  # 2^-20 opens the first bucket; 0.75 = 2^-1 (1 + 4/8)
    # NaN counts as zero; the most negative bucket is 0
    assert hist_buckets(torch.tensor([float("nan"), -1e40, -0.75])).tolist() == [HIST_ZERO, 0, 2 * HIST_ZERO - b[11]]
    edges = bucket_edges()
    assert edges[0] == 2.0 ** -20 and edges[-1] == 2.0 ** 20 and edges[8] == 2.0 ** -19 and edges[1] == 2.0 ** -20 * 1.125
    mids = bucket_values()
    x = np.abs(np.random.default_rng(0).lognormal(0, 2, 500))
    got = hist_buckets(torch.tensor(x, dtype=torch.float32)).numpy() - HIST_ZERO - 1
    assert np.all((edges[got] <= x.astype(np.float32)) & (x.astype(np.float32) < edges[got + 1]))
    assert np.all(np.abs(mids[got + HIST_ZERO + 1] / x - 1) < 0.062)


def test_histograms_merge_exactly_across_image_partitions():
    from neuronindex.science.stats import LayerStats

    rng = np.random.default_rng(1)
    acts = torch.from_numpy(np.maximum(rng.normal(0, 1, (40, 5, 3, 3)), 0).astype(np.float32))
    whole = LayerStats(5, top_k=4, curve_len=4, probe_size=8)
    whole.add(acts, torch.arange(40))
    a, b = LayerStats(5, top_k=4, curve_len=4, probe_size=8), LayerStats(5, top_k=4, curve_len=4, probe_size=8)
    a.add(acts[:17], torch.arange(17))
    b.add(acts[17:], torch.arange(17, 40))
    b.merge(LayerStats.from_state(a.state_dict()))
    assert torch.equal(whole.hist, b.hist)
    assert int(whole.hist.sum()) == 40 * 5


def test_stored_histograms_agree_with_brute_force(edge_index):
    import neuronindex

    values, _ = _brute(edge_index, "conv2")
    with neuronindex.open(edge_index) as idx:
        for c in range(values.shape[1]):
            d = idx.distribution(f"tiny_cnn/conv2/{c}")
            h, v = d["histogram"], values[:, c]
            assert h["n_images"] == len(v) and sum(h["counts"]) == len(v)
            assert h["density"] == pytest.approx(np.mean(v > 0))
            assert h["share_zero"] == pytest.approx(np.mean(v == 0))
            edges = np.array(h["edges"])
            assert edges[-1] == pytest.approx(v.max(), rel=1e-6) and edges[0] == pytest.approx(v.min(), abs=1e-6)
            # every value lies in its bin up to the buckets' 5% (a value near an edge may fall either side)
            for i, count in enumerate(h["counts"]):
                lo, hi = edges[i], edges[i + 1]
                inner = np.sum((v > lo * 1.06 + 1e-9) & (v < hi * 0.94 - 1e-9))
                outer = np.sum((v >= lo * 0.94 - 1e-9) & (v <= hi * 1.06 + 1e-9))
                assert inner <= count <= outer, (c, i)
            # the per-class bars: class means over each class's images, by brute force
            labels = [r["name"] for r in idx.query(
                "SELECT c.name FROM images i JOIN classes c ON c.id = i.class_id ORDER BY i.position").rows()]
            for row in d["classes"]:
                mask = np.array([lab == row["class"] for lab in labels])
                assert row["mean_activation"] == pytest.approx(v[mask].mean(), rel=1e-5, abs=1e-6)
            means = [r["mean_activation"] for r in d["classes"]]
            assert means == sorted(means, reverse=True)


def test_context_heatmap_is_the_unit_map_aligned_by_its_field(edge_index):
    import neuronindex
    from neuronindex.query.pictures import unit_map
    from neuronindex.science.dissection import upsample

    with neuronindex.open(edge_index) as idx:
        key = "tiny_cnn/conv1/1"
        top = idx.neuron(key).topk().rows()[0]
        amap, e = unit_map(idx, key, 1)
        # the recomputed map peaks where pass 1 stored it, at the stored value
        assert amap.max() == pytest.approx(top["activation"], rel=1e-5)
        assert amap[top["y"], top["x"]] == pytest.approx(top["activation"], rel=1e-5)
        # conv1 (3x3, pad 1, stride 1): unit (i, j) is centred on pixel (i, j), so the upsampled
        # map is the map itself
        up = upsample(amap, (16, 16), (e["rf_y0"], e["rf_x0"]), (e["rf_h"], e["rf_w"]), e["stride"])
        np.testing.assert_allclose(up, amap, rtol=1e-6)
        # a stride-2 map of 2x2 units with fields of 4 starting at -1: centres at 0.5 and 2.5
        small = np.array([[0.0, 2.0], [4.0, 6.0]], np.float32)
        up2 = upsample(small, (4, 4), (-1, -1), (4, 4), 2)
        assert up2[0, 0] == pytest.approx(0.0) and up2[3, 3] == pytest.approx(6.0)
        # pixel 1 sits a quarter of the way from centre 0.5 to centre 2.5, in both axes
        assert up2[1, 1] == pytest.approx(0.75 * 0.75 * 0 + 0.75 * 0.25 * 2 + 0.25 * 0.75 * 4 + 0.25 * 0.25 * 6)
        img = np.asarray(idx.context(key, 1))
        assert img.shape == (16, 16, 3)
        # the field box (cyan) is drawn at the stored box
        x0, y0 = max(top["box_x0"], 0), max(top["box_y0"], 0)
        assert tuple(img[y0, x0]) == (80, 220, 255)
        # the heat is brightest along the edge and dark on flat ground away from it
        col = top["x"]
        far = (col + 5) % 16 if abs(((col + 5) % 16) - col) > 2 else (col - 5) % 16
        assert img[8, col].astype(int).sum() > img[8, far].astype(int).sum() + 60


def test_deconvnet_of_an_edge_detector_shows_the_edge(edge_index):
    """conv1/1 = (right column - left column) / 3 of every colour: its reconstruction on its top
    image is that filter in pixel space: left column negative (dark), middle zero (grey), right
    column positive (bright), the same in the three colours."""
    import neuronindex
    from neuronindex.query.pictures import reconstruction_array

    with neuronindex.open(edge_index) as idx:
        key = "tiny_cnn/conv1/1"
        g, e = reconstruction_array(idx, key, 1, rule="deconvnet")
        y, x = e["y"], e["x"]
        patch = g[y - 1:y + 2, x - 1:x + 2]
        expected = np.zeros((3, 3, 3))
        expected[:, 0], expected[:, 2] = -1 / 3 / 0.25, 1 / 3 / 0.25  # weights / std of the normalisation
        np.testing.assert_allclose(patch, expected, atol=1e-6)
        outside = np.ones(g.shape[:2], bool)
        outside[y - 1:y + 2, x - 1:x + 2] = False
        assert np.abs(g[outside]).max() == 0
        crop = np.asarray(idx.reconstruction(key, 1))
        assert crop.shape == (3, 3, 3)
        assert (crop[:, 0] == 0).all() and (crop[:, 1] == 128).all() and (crop[:, 2] == 255).all()


def test_rules_differ_where_the_forward_mask_matters(edge_index):
    """Through conv1's ReLU and max-pool to conv2: the deconvnet rule ignores the forward mask,
    guided backpropagation keeps it, so guided is zero wherever no conv1 unit under the field fired."""
    import neuronindex
    from neuronindex.query.pictures import deconvnet_relu, guided_relu, reconstruction_array

    x = torch.tensor([-1.0, 2.0, -3.0, 4.0], requires_grad=True)
    g = torch.tensor([1.0, 1.0, -1.0, -1.0])
    (d,) = torch.autograd.grad(deconvnet_relu(x), x, g)
    (gd,) = torch.autograd.grad(guided_relu(x), x, g)
    assert d.tolist() == [1.0, 1.0, 0.0, 0.0] and gd.tolist() == [0.0, 1.0, 0.0, 0.0]
    with neuronindex.open(edge_index) as idx:
        live = [r["key"] for r in idx.query("SELECT key FROM neurons WHERE key LIKE 'tiny_cnn/conv2/%' AND NOT dead "
                                              "ORDER BY key").rows()]
        differ = 0
        for key in live:
            dec, e = reconstruction_array(idx, key, 1, rule="deconvnet")
            gui, _ = reconstruction_array(idx, key, 1, rule="guided")
            back, _ = reconstruction_array(idx, key, 1, rule="backprop")
            box = np.zeros(dec.shape[:2], bool)
            box[max(e["box_y0"], 0):e["box_y1"], max(e["box_x0"], 0):e["box_x1"]] = True
            for r in (dec, gui, back):
                assert np.abs(r[~box]).max() == 0  # nothing outside the receptive field
            differ += not np.allclose(dec, gui)
        assert differ > 0


def test_pictures_reject_bad_requests(edge_index):
    import neuronindex
    from neuronindex.errors import NotFoundError, UsageError

    with neuronindex.open(edge_index) as idx:
        with pytest.raises(UsageError, match="unknown rule"):
            idx.reconstruction("tiny_cnn/conv1/1", 1, rule="lrp")
        with pytest.raises(NotFoundError, match="has no rank 99 top image"):
            idx.context("tiny_cnn/conv1/1", 99)
        with pytest.raises(UsageError, match="unknown side"):
            idx.context("tiny_cnn/conv1/1", 1, side="middle")
        with pytest.raises(NotFoundError):
            idx.context("tiny_cnn/conv9/1", 1)


# ------------------------------------------------------------------ over HTTP and the CLI
@pytest.fixture(scope="module")
def two_models(tmp_path_factory, edge_index):
    """The edge index with a second model (the same tiny CNN under another name) over the same images."""
    import shutil

    from neuronindex.jobs.ingest import ingest

    root = tmp_path_factory.mktemp("two")
    shutil.copytree(edge_index, root / "index")
    images = edge_index.parent / "images"
    ingest("python:tinymodels:wide_cnn", str(images), "all-conv", root / "index", name="wide",
           preprocessing=__import__("neuronindex.nets.models", fromlist=["Preprocessing"]).Preprocessing(
               input_size=(16, 16), geometry="resize", resize=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
           progress=False)
    return root / "index"


def test_pictures_and_distribution_over_http(edge_index):
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from neuronindex.service.app import create_app

    client = TestClient(create_app(edge_index))
    r = client.get("/api/neurons/tiny_cnn/conv1/1/context/1.png")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (16, 16)
    r = client.get("/api/neurons/tiny_cnn/conv1/1/deconv/1.png", params={"rule": "guided"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (3, 3)
    r = client.get("/api/neurons/tiny_cnn/conv1/1/deconv/1.png", params={"whole": "true"})
    assert Image.open(io.BytesIO(r.content)).size == (16, 16)
    r = client.get("/api/neurons/tiny_cnn/conv1/1/context/2.png", params={"side": "bottom"})
    assert r.status_code == 200
    bad = client.get("/api/neurons/tiny_cnn/conv1/1/deconv/1.png", params={"rule": "lrp"})
    assert bad.status_code == 400 and "unknown rule" in bad.json()["error"]
    assert client.get("/api/neurons/tiny_cnn/conv1/1/context/99.png").status_code == 404
    d = client.get("/api/neurons/tiny_cnn/conv2/0/distribution").json()
    assert d["ok"] and sum(d["histogram"]["counts"]) == d["histogram"]["n_images"] == 15
    assert {c["class"] for c in d["classes"]} == {"red", "green", "blue", "edge"}
    page = client.get("/neuron/tiny_cnn/conv2/0").text
    assert 'id="histogram"' in page and "/deconv/1.png" in page and 'id="class-means"' in page
    assert "/context/1.png" in client.get("/neuron/tiny_cnn/conv2/0?view=context").text
    dead = client.get("/neuron/tiny_cnn/conv1/2").text  # conv1/2 has a bias of -100: never fires
    assert 'class="dead"' in dead and "nf.png" not in dead.split("<h2>Similar")[0] and "colour selectivity" not in dead
    layer = client.get("/layer/tiny_cnn/conv1", params={"q": "colour>>2"})
    assert layer.status_code == 200 and 'id="problem"' in layer.text and "unknown field" in layer.text
    missing = client.get("/neuron/tiny_cnn/conv9/0")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "no neuron" in missing.text


def test_compare_two_models_over_http_and_cli(two_models, cli_runner):
    import json

    from fastapi.testclient import TestClient

    from cli.main import cli
    from neuronindex.service.app import create_app

    client = TestClient(create_app(two_models))
    r = client.get("/api/compare", params={"a": "tiny_cnn", "b": "wide"}).json()
    assert r["ok"] and r["similarity"]["shared"] == 15 and len(r["rows"]) == 2
    # the same model beside itself: each layer's best match elsewhere in it
    same = client.get("/api/compare", params={"a": "tiny_cnn", "b": "tiny_cnn"}).json()
    assert same["similarity"]["layers_a"] == ["conv1", "conv2"]
    m = client.get("/api/compare/matches", params={"neuron": "tiny_cnn/conv1/0", "other": "wide", "k": 3}).json()
    assert m["ok"] and len(m["rows"]) == 3 and m["rows"][0]["correlation"] >= m["rows"][1]["correlation"]
    assert client.get("/api/compare", params={"a": "tiny_cnn", "b": "nope"}).status_code == 404
    page = client.get("/compare", params={"a": "tiny_cnn", "b": "wide", "neuron": "tiny_cnn/conv1/0"}).text
    assert 'id="layers"' in page and 'id="similarity"' in page and 'id="matches"' in page
    out = cli_runner.invoke(cli, ["compare", str(two_models), "tiny_cnn", "wide", "--neuron", "tiny_cnn/conv1/0",
                                  "-k", "2", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert [row["key"] for row in json.loads(out.output)] == [row["key"] for row in m["rows"][:2]]
    out = cli_runner.invoke(cli, ["compare", str(two_models), "tiny_cnn", "wide", "--neuron", "wide/conv1_1/0"])
    assert out.exit_code == 0 and "tiny_cnn/" in out.output
    out = cli_runner.invoke(cli, ["compare", str(two_models), "tiny_cnn", "nope"])
    assert out.exit_code != 0 and "no model 'nope'" in out.output


def test_show_views_and_distribution_on_the_cli(edge_index, cli_runner, tmp_path):
    import json

    from PIL import Image

    from cli.main import cli

    for view, size in (("context", (16, 16)), ("deconvnet", (3, 3)), ("guided", (3, 3))):
        out = tmp_path / f"{view}.png"
        r = cli_runner.invoke(cli, ["show", str(edge_index), "tiny_cnn/conv1/1", "--view", view, "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert Image.open(out).size == size
    r = cli_runner.invoke(cli, ["show", str(edge_index), "tiny_cnn/conv1/1", "--view", "context", "--rank", "50"])
    assert r.exit_code != 0 and "has no rank 50 top image" in r.output and "Traceback" not in r.output
    r = cli_runner.invoke(cli, ["neuron", str(edge_index), "tiny_cnn/conv2/0", "--distribution"])
    got = json.loads(r.output)
    assert got["hist_n_images"] == 15 and len(got["hist_counts"]) == 32 and len(got["classes"]) == 4


def test_login_form_sets_an_httponly_cookie(edge_index):
    from fastapi.testclient import TestClient

    from neuronindex.service.app import create_app
    from neuronindex.service.auth import COOKIE

    # the forms post from the site itself, as a browser says in Origin
    client = TestClient(create_app(edge_index, token="s3cret"), follow_redirects=False,
                        headers={"Origin": "http://testserver"})
    r = client.get("/layer/tiny_cnn/conv1?sort=color_index")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Flayer%2Ftiny_cnn%2Fconv1%3Fsort%3Dcolor_index"
    assert client.get("/api/models").status_code == 401  # the API still answers JSON
    assert 'name="token"' in client.get("/login").text
    wrong = client.post("/login", data={"token": "nope", "next": "/"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text and COOKIE not in wrong.headers.get("set-cookie", "")
    evil = client.post("/login", data={"token": "s3cret", "next": "//evil.example/x"})
    assert evil.headers["location"] == "/"  # no open redirect
    ok = client.post("/login", data={"token": "s3cret", "next": "/layer/tiny_cnn/conv1"})
    cookie = ok.headers["set-cookie"]
    assert ok.status_code == 303 and ok.headers["location"] == "/layer/tiny_cnn/conv1"
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "s3cret" not in cookie
    assert client.get("/layer/tiny_cnn/conv1").status_code == 200  # the client keeps the cookie
    assert client.get("/api/models").status_code == 200
    forged = TestClient(client.app, cookies={COOKIE: "forged"}, follow_redirects=False)
    assert forged.get("/api/models").status_code == 401
    logout = client.post("/logout")
    assert logout.status_code == 303 and 'max-age=0' in logout.headers["set-cookie"].lower()


def test_api_docs_are_served_from_the_package(edge_index):
    from fastapi.testclient import TestClient

    from neuronindex.service.app import create_app

    client = TestClient(create_app(edge_index))
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower() and "/static-offline-docs/swagger-ui-bundle.js" in docs
    js = client.get("/static-offline-docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert "/static-offline-docs/redoc.standalone.js" in client.get("/redoc").text


def test_page_numbers_are_rounded():
    from neuronindex.service.routes_pages import num

    assert [num(v) for v in (2289.3345, 974.699, 0.0239493, 0.76522, 0.0, None, True, 7, 123456)] == \
        ["2,289", "975", "0.0239", "0.765", "0", "\u2014", "yes", "7", "123,456"]
    assert num(float("nan")) == "\u2014"
