"""Seed 004 on a real ImageNet network: SqueezeNet 1.0 over 500 real ImageNet photos.

Skipped without ../shared/data (a fresh clone); run in CI, where it is present. One ingest of all
nine layers (features.1 and the eight Fire outputs) serves every test here.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest

import neuronindex
from conftest import shared
from neuronindex import wordnet
from neuronindex.jobs import categories as categories_job
from neuronindex.query import categories as categories_query
from neuronindex.science.optvis import render

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

LAYERS = ["features.1", "features.3", "features.4", "features.5", "features.7", "features.8", "features.9",
          "features.10", "features.12"]
# opponent hue bands (red is 30 deg, yellow 90, green 150, cyan 210, blue 270) wide enough for each term
HUES = {"red": [(315, 360), (0, 60)], "green": [(75, 210)], "blue": [(180, 300)]}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    from neuronindex.jobs.ingest import IngestParams, ingest
    from neuronindex.nets.models import Preprocessing

    weights = shared("imagenet-squeezenet", "squeezenet1_0-deepcompression.pth")
    images = shared("imagenet-sample")
    path = tmp_path_factory.mktemp("imagenet") / "index"
    caffe = Preprocessing(input_size=(227, 227), geometry="resize-crop", resize=256, mean=(104, 117, 123),
                          std=(1, 1, 1), channel_order="bgr", pixel_scale=255)
    # as on a pip-only machine: no Debian WordNet, so names and the hierarchy come from the bundled one
    before = os.environ.get("NEURONINDEX_WORDNET")
    os.environ["NEURONINDEX_WORDNET"] = str(path.parent / "no-debian-wordnet")
    try:
        ingest("torchvision:squeezenet1_0", str(images), ",".join(LAYERS), path, weights=str(weights),
               name="squeezenet", preprocessing=caffe, progress=False,
               params=IngestParams(batch_size=32, workers=2, directions="svd,random,nmf,sae", spatial_means=True))
    finally:
        if before is None:
            del os.environ["NEURONINDEX_WORDNET"]
        else:
            os.environ["NEURONINDEX_WORDNET"] = before
    with neuronindex.open(path) as idx:
        yield idx


def test_colour_selectivity_falls_with_depth(index):
    """Seed 004, Fig. 8: the share of colour-selective neurons (alpha >= 0.4) falls with depth."""
    rows = index.sql("SELECT layer, avg((color_index >= 0.4)::INT) AS share, count(*) AS n FROM neuron_view "
                     "WHERE NOT dead AND kind = 'channel' GROUP BY layer ORDER BY min(id)").rows()
    assert [r["layer"] for r in rows] == LAYERS
    share = [r["share"] for r in rows]
    print("\ncolour-selective share per layer:", [round(s, 3) for s in share])
    assert share[0] >= 0.15
    assert all(s <= 0.03 for s in share[-3:])
    depth_rank = np.argsort(np.argsort(-np.array(share)))  # 0 = largest share
    assert np.corrcoef(depth_rank, np.arange(len(share)))[0, 1] >= 0.8  # Spearman: falls overall
    assert share[0] > max(share[3:])


def test_stored_alpha_is_eq_2_of_the_stored_nf(index):
    """Recompute alpha from each stored NF image and its per-pixel std, written out from the
    formulas (opponent space, Delchambre's weighted covariance, angle to the intensity axis)."""
    from PIL import Image

    rows = index.sql("SELECT n.layer, n.color_index, f.nf_png, f.std, f.height, f.width FROM neuron_view n "
                     "JOIN neuron_features f ON f.neuron_id = n.id WHERE n.color_index IS NOT NULL "
                     "AND n.id % 7 = 0").rows()
    diffs: dict[str, list[float]] = {}
    for r in rows:
        rgb = np.asarray(Image.open(io.BytesIO(r["nf_png"])).convert("RGB"), dtype=float).reshape(-1, 3) / 255
        std = np.array(r["std"], dtype=float)
        ok = np.isfinite(std)
        x = rgb[ok] @ np.array([[1, -1, 0], [1, 1, -2], [1, 1, 1]]).T / np.array([np.sqrt(2), np.sqrt(6), np.sqrt(3)])
        w = 1 / np.maximum(std[ok], 1.0)
        mu = (w[:, None] * x).sum(0) / w.sum()
        c = ((w[:, None] * (x - mu)).T @ (w[:, None] * (x - mu))) / (w ** 2).sum()
        v = np.linalg.eigh(c)[1][:, -1]
        alpha = np.degrees(np.arccos(abs(v[2]) / np.linalg.norm(v))) / 90
        diffs.setdefault(r["layer"], []).append(abs(alpha - r["color_index"]))
    assert set(diffs) == set(LAYERS)
    for layer, d in diffs.items():
        # the stored NF is 8-bit; alpha comes from the float NF
        assert np.mean(d) < 0.02, layer


# a colour by plain RGB rules, independent of the colour-naming model: what a person would call it
RGB_RULES = {
    "red": lambda p: (p[:, 0] > p[:, 1] + 60) & (p[:, 0] > p[:, 2] + 40),
    "green": lambda p: (p[:, 1] >= p[:, 0] - 10) & (p[:, 1] > p[:, 2] + 40),  # yellow-greens included
    "blue": lambda p: (p[:, 2] > p[:, 0] + 40) & (p[:, 2] >= p[:, 1]),
    "yellow": lambda p: (p[:, 0] > 150) & (p[:, 1] > 140) & (p[:, 2] < p[:, 1] - 60),
}


def test_named_colours_of_the_first_layer_have_their_hue(index):
    """Each colour word finds first-layer NFs that show that colour: the dominant end's hue lies in
    the word's band, and a tenth of the NF's pixels or more pass a plain RGB rule for it."""
    from PIL import Image

    for colour, ranges in HUES.items():
        rows = index.search(f"{colour} features.1").rows()
        assert rows, colour
        assert all(colour in r["color_label"].split("/") and r["color_index"] >= 0.4 for r in rows)
        hues = [r["hue"] for r in index.sql(f"SELECT hue FROM neuron_view WHERE id IN "
                                            f"({','.join(str(r['id']) for r in rows if r['color_name'] == colour)})")]
        assert hues and all(any(lo <= h < hi for lo, hi in ranges) for h in hues), (colour, hues)
    for colour, rule in RGB_RULES.items():
        rows = index.search(f"{colour} features.1").rows()
        assert rows, colour
        for r in rows:
            png = index.sql("SELECT nf_png FROM neuron_features WHERE neuron_id = ?", [r["id"]]).rows()[0]["nf_png"]
            pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int).reshape(-1, 3)
            assert rule(pixels).mean() >= 0.1, (colour, r["key"], r["color_label"])


def test_no_confident_colour_name_without_colour_selectivity(index):
    """Deep units (alpha ~ 0.03) keep a stored dominant name for SQL, but nothing a person is shown."""
    rows = index.sql("SELECT count(*) FILTER (WHERE color_label IS NOT NULL AND color_index < 0.4) AS shown, "
                     "count(*) FILTER (WHERE color_index < 0.4 AND color_name IS NOT NULL) AS stored FROM neuron_view "
                     "WHERE layer = 'features.12'").rows()[0]
    assert rows["shown"] == 0 and rows["stored"] > 400
    assert all(r["color_label"] is None or r["color_index"] >= 0.4 for r in index.search("features.12 limit:600").rows())


def test_receptive_fields_per_fire_half(index):
    rows = index.sql("SELECT l.name, min(greatest(n.rf_h, n.rf_w)) AS lo, max(greatest(n.rf_h, n.rf_w)) AS hi "
                     "FROM neurons n JOIN layers l ON l.id = n.layer_id WHERE n.kind = 'channel' "
                     "GROUP BY l.name, l.position ORDER BY l.position").rows()
    fields = {r["name"]: (r["lo"], r["hi"]) for r in rows}
    assert fields["features.1"] == (7, 7)
    assert fields["features.3"] == (11, 19)  # expand 1x1 vs expand 3x3 (seed 004's Fire fields)
    assert fields["features.12"] == (123, 155)


def test_labels_from_file_names_and_class_names(index):
    dataset = index.sql("SELECT labels, kind, n_images FROM datasets").rows()
    assert dataset == [{"labels": "imagenet", "kind": "flat", "n_images": 500}]
    tench = index.sql("SELECT name, wnid, is_leaf FROM classes WHERE wnid = 'n01440764'").rows()
    assert tench == [{"name": "tench", "wnid": "n01440764", "is_leaf": True}]
    tops = [r["top_class"] for r in index.sql("SELECT top_class FROM neuron_view WHERE top_class IS NOT NULL")]
    assert tops and not any(t.startswith("n0") and t[1:].isdigit() for t in tops)
    for query in ("Labrador retriever", 'class:"Labrador retriever"', "n02099712", "tench features.12"):
        index.search(query)  # every form of a class name is understood
    # ingested without Debian's WordNet: the bundled ImageNet-1k hierarchy gives `dog` its breeds
    assert index.search("dog features.12").rows()
    assert index.sql("SELECT count(*) AS n FROM classes WHERE parent_id IS NOT NULL")[0]["n"] > 1000


def test_dead_neurons_make_no_claims(index):
    claims = index.sql("SELECT count(*) AS n FROM neurons WHERE dead AND (color_index IS NOT NULL OR color_name IS "
                       "NOT NULL OR class_index IS NOT NULL OR top_class_id IS NOT NULL OR csi IS NOT NULL)").rows()
    assert claims == [{"n": 0}]


def test_seed001_directions_on_squeezenet(index):
    """Seed 001 on a real ImageNet network: SVD directions per layer by singular value, and its
    redundancy finding measured: the top-20 and bottom-20 image sets of the 8 highest-variance
    neurons of a layer overlap each other more than those of its SVD directions do (mean over
    the nine layers)."""
    from neuronindex.report import figure_redundancy, figure_spectrum

    spectrum = figure_spectrum(index, "squeezenet")
    assert list(spectrum) == LAYERS
    for layer, s in spectrum.items():
        sv = s["singular_values"]
        assert all(a >= b for a, b in zip(sv, sv[1:])) and 1 <= s["kept"] <= 8
        found = index.search(f"svd {layer} limit:20").rows()
        assert [r["sv"] for r in found] == pytest.approx(sv[: s["kept"]], rel=1e-6)
    red = figure_redundancy(index, "squeezenet")
    means = {(g, side): float(np.mean([red[layer][g][side]["mean_overlap"] for layer in LAYERS]))
             for g in ("neurons", "svd", "random") for side in ("top", "bottom")}
    print("\nmean pairwise overlap of top/bottom-20 sets:", {k: round(v, 3) for k, v in means.items()})
    assert means[("svd", "top")] < means[("neurons", "top")]
    assert means[("svd", "bottom")] < means[("neurons", "bottom")]


def test_learned_dictionaries_on_squeezenet(index):
    """Issue 41's comparison on the real network: every layer has NMF and SAE atoms indexed as units
    beside its neurons and SVD directions; their R^2 obeys what must hold (K principal components
    are the best K-dimensional affine fit, so no K neurons, NMF atoms or SAE atoms beat them), the
    SAE is sparse, and the learned atoms have top images like any unit."""
    fits = index.dictionary_fits("squeezenet").rows()
    assert sorted({(f["layer"], f["kind"]) for f in fits}) == sorted((layer, k) for layer in LAYERS for k in ("nmf", "sae"))
    for f in fits:
        assert f["atoms"] == 16 and f["samples"] == 8000  # 500 images x 16 positions, under the 16,384 cap
        assert 0 < f["r2"] <= f["r2_pca"] + 1e-6 and f["r2_neurons"] <= f["r2_pca"] + 1e-6
        assert f["l0"] < f["atoms"]
    rows = index.dictionaries("squeezenet").rows()
    print("\n" + "\n".join(f"{r['layer']:16} {r['kind']:7} {r['units']:4} share {r['top_class_share']:.3f} "
                           f"gamma {r['class_index']:.3f} alpha {r['color_index']:.3f} red {r['redundancy']:.3f} "
                           f"r2 {r['r2']:.3f}" for r in rows))
    assert {(r["layer"], r["kind"]) for r in rows} == {(layer, k) for layer in LAYERS for k in ("channel", "svd", "nmf", "sae")}
    for kind in ("nmf", "sae"):
        found = index.search(f"kind:{kind} features.12 limit:100").rows()
        assert len(found) == 16 and all(r["kind"] == kind for r in found)
        assert len(index.neuron(found[0]["key"]).topk().rows()) == 100


def test_activation_maximisation_fills_the_first_layer(index):
    """Seeds 000/003 on the real network: `visualize` gives every neuron of features.1 an optimised
    image that drives it at least as hard as its best dataset image (a linear 7x7 unit's optimum
    saturates its field, so this must hold for nearly all), and for the colour-selective ones
    (NF alpha >= 0.4) the image's colour axis is the NF's far more often than for the others."""
    from neuronindex.jobs import visualize as viz

    done = viz.visualize_layers(index.path, ["features.1"], params=render.VizParams(steps=256), progress=False)
    assert done["optimised"] >= 96
    with neuronindex.open(index.path) as idx:
        rows = idx.sql("SELECT n.id, n.color_index, n.viz_activation_ratio AS ratio, f.nf_png, f.std, v.image_png, "
                       "v.box_x0, v.box_y0, v.box_x1, v.box_y1 FROM neuron_view n "
                       "JOIN neuron_features f ON f.neuron_id = n.id JOIN visualizations v ON v.neuron_id = n.id "
                       "AND v.objective = 'unit' AND v.start IS NULL "
                       "WHERE n.layer = 'features.1' AND n.kind = 'channel' AND NOT n.dead").rows()
    assert len(rows) == 96 and all(r["ratio"] is not None for r in rows)
    reached = np.mean([r["ratio"] >= 1 for r in rows])
    assert reached >= 0.9, reached

    def colour_axis(rgb, w):  # degrees (mod 180) of the first weighted principal component on (O1, O2)
        x = rgb @ np.array([[1, -1, 0], [1, 1, -2], [1, 1, 1]]).T / np.array([np.sqrt(2), np.sqrt(6), np.sqrt(3)])
        mu = (w[:, None] * x).sum(0) / w.sum()
        v = np.linalg.eigh(((w[:, None] * (x - mu)).T @ (w[:, None] * (x - mu))) / (w ** 2).sum())[1][:, -1]
        return None if np.hypot(v[0], v[1]) < 1e-6 else float(np.degrees(np.arctan2(v[1], v[0])) % 180)

    def same_axis(r):  # a linear unit's optimum saturates both ends of its colour axis: compare axes
        from PIL import Image

        nf = np.asarray(Image.open(io.BytesIO(r["nf_png"])).convert("RGB"), dtype=float).reshape(-1, 3) / 255
        std = np.array(r["std"], dtype=float)
        seen = np.isfinite(std)
        a = colour_axis(nf[seen], 1 / np.maximum(std[seen], 1.0))
        image = np.asarray(Image.open(io.BytesIO(r["image_png"])).convert("RGB"), dtype=float)
        box = [r[k] for k in ("box_x0", "box_y0", "box_x1", "box_y1")]
        if None not in box:
            image = image[max(box[1], 0):max(box[3], 0), max(box[0], 0):max(box[2], 0)]
        field = image.reshape(-1, 3) / 255
        b = colour_axis(field, np.ones(len(field)))
        if a is None or b is None:
            return False
        d = abs(a - b) % 180
        return min(d, 180 - d) <= 30

    selective = [same_axis(r) for r in rows if (r["color_index"] or 0) >= 0.4]
    others = [same_axis(r) for r in rows if (r["color_index"] or 0) < 0.4]
    print(f"\ncolour axis of the optimised image = the NF's: {np.mean(selective):.2f} of {len(selective)} "
          f"colour-selective units, {np.mean(others):.2f} of {len(others)} others")
    assert len(selective) >= 10 and np.mean(selective) >= 0.6 and np.mean(selective) > np.mean(others) + 0.2


def _wordnet_paths(wnids: list[str]) -> np.ndarray:
    """Path lengths between synsets along WordNet's first-hypernym tree, read from the WordNet
    database itself (not from the index's class table)."""
    chains = [[w] + [h for h, _ in wordnet.hypernyms(w)] for w in wnids]
    depth = [{a: k for k, a in enumerate(c)} for c in chains]
    out = np.zeros((len(wnids), len(wnids)))
    for i, ci in enumerate(chains):
        for j in range(i + 1, len(chains)):
            k = next(k for k, a in enumerate(ci) if a in depth[j])
            out[i, j] = out[j, i] = k + depth[j][ci[k]]
    return out


def test_category_hierarchy_follows_wordnet_and_more_so_with_depth(index):
    """Seed 000's Algorithm 1 on 500 ImageNet classes: the merge heights correlate with WordNet's tree
    (recomputed here from the stored cophenetic distances and the WordNet database) well above
    shuffled labels, and more at the last Fire module than at the first convolution."""
    from scipy.stats import spearmanr

    from neuronindex.science import hierarchy

    h = index.categories()
    assert h.meta["layer"] == "features.12" and h.meta["n_classes"] == 500 and h.meta["pooling"] == "mean"
    names = [r["class"] for r in h.rows()]
    wnids = [r["wnid"] for r in h.rows()]
    where = {c: i for i, c in enumerate(names)}
    coph = np.zeros((500, 500))
    for r in index.query("SELECT a.name AS a, b.name AS b, d.cophenetic FROM class_distances d JOIN classes a ON "
                         "a.id = d.class_a JOIN classes b ON b.id = d.class_b").rows():
        coph[where[r["a"]], where[r["b"]]] = r["cophenetic"]
    iu = np.triu_indices(500, 1)
    corr = spearmanr(coph[iu], _wordnet_paths(wnids)[iu]).statistic
    assert corr == pytest.approx(h.meta["wordnet_correlation"], abs=1e-6)
    assert corr > h.meta["wordnet_baseline"] + 0.1 and abs(h.meta["wordnet_baseline"]) < 0.05
    lid = index.query("SELECT id FROM layers WHERE name = 'features.1'").rows()[0]["id"]
    classes, x = categories_query.class_vectors(index.con, lid, "mean")
    first = hierarchy.wordnet_agreement(hierarchy.category_hierarchy(hierarchy.cosine_distances(x)),
                                        categories_query.class_chains(index.con, classes))
    assert corr > first["correlation"] + 0.1


def test_prediction_tree_of_an_inner_wordnet_class_and_the_maps(index):
    """`tree --class dog` takes the images of every class under WordNet's dog; the map lays out the
    512 neurons (and directions) of features.12. All land in the index and on the gallery's pages."""
    from fastapi.testclient import TestClient

    from neuronindex.jobs import maps
    from neuronindex.service.app import create_app

    dogs = index.query("WITH RECURSIVE under(id) AS (SELECT id FROM classes WHERE name = 'dog' UNION SELECT c.id "
                       "FROM classes c JOIN under u ON c.parent_id = u.id) SELECT count(*) AS n FROM images "
                       "WHERE class_id IN (SELECT id FROM under)").rows()[0]["n"]
    assert dogs >= 40  # ImageNet's 118 dog breeds, one photo each in the sample
    done = categories_job.tree(index.path, "dog", "features.12", max_images=40)
    assert done["images"] == 40 and done["class_images"] == dogs and done["filters"] == 512
    assert done["merges"] == 39  # 40 images, 512 filters: the images run out first
    units = index.query("SELECT count(*) AS n FROM embeddings e JOIN layers l ON l.id = e.layer_id "
                        "WHERE e.space = 'prototype' AND l.name = 'features.12'").rows()[0]["n"]
    assert units > 512  # the 512 channels and the layer's directions (this index has svd,random)
    made = maps.make_maps(index.path, ["features.12"], spaces=("neurons",), progress=False)
    assert made[0]["points"] == units and made[0]["status"] == "made"
    import neuronindex

    with neuronindex.open(index.path) as fresh:
        t = fresh.prediction_tree("dog", "features.12")
        assert len([n for n in t.rows() if n["critical"]]) == 39
        assert all(n["critical"].startswith("squeezenet/features.12/") for n in t.rows() if n["critical"])
        m = fresh.map("features.12")
        assert len(m) == units and not m.meta["stale"]
        assert sum(r["kind"] == "channel" for r in m.rows()) == 512
    client = TestClient(create_app(index.path))
    for url in ("/categories/squeezenet", "/tree/squeezenet/features.12/dog", "/map/squeezenet/features.12",
                "/api/categories/dendrogram.png?model=squeezenet", "/api/categories/mst.png?model=squeezenet"):
        assert client.get(url).status_code == 200, url


def test_first_layer_deconvnet_is_the_filter_in_pixel_space(index):
    """Zeiler & Fergus's reconstruction of a first-layer unit (conv 7x7 + ReLU) on its top image is
    its filter laid over the receptive field: d a / d pixel = 255 w (Caffe's 0-255 scale, BGR order,
    std 1), wherever the field lies inside the image; for every rule, since no ReLU lies below."""
    from neuronindex.query.pictures import reconstruction_array

    idx = index
    loaded = idx.network("squeezenet", "features.1").loaded
    w = loaded.module.features[0].weight.detach().numpy().astype(np.float64)  # (96, 3 BGR, 7, 7)
    for channel in (0, 17, 60):
        key = f"squeezenet/features.1/{channel}"
        if idx.neuron(key).row["dead"]:
            continue
        for rule in ("deconvnet", "guided"):
            g, e = reconstruction_array(idx, key, 1, rule=rule)
            x0, y0, x1, y1 = e["box_x0"], e["box_y0"], e["box_x1"], e["box_y1"]
            expected = 255 * w[channel][::-1].transpose(1, 2, 0)  # (7, 7, RGB)
            inside = np.zeros((7, 7), bool)
            inside[max(0, -y0):7 - max(0, y1 - g.shape[0]), max(0, -x0):7 - max(0, x1 - g.shape[1])] = True
            got = np.zeros((7, 7, 3))
            got[inside] = g[max(y0, 0):y1, max(x0, 0):x1].reshape(-1, 3)
            np.testing.assert_allclose(got[inside], expected[inside], rtol=1e-4, atol=1e-4 * np.abs(expected).max())
            mask = np.ones(g.shape[:2], bool)
            mask[max(y0, 0):y1, max(x0, 0):x1] = False
            assert np.abs(g[mask]).max() == 0


def test_activation_histograms_cover_every_image(index):
    rows = index.sql("SELECT h.n_images, list_sum(h.counts) AS binned, list_sum(h.bucket_counts) AS bucketed, "
                     "h.density, n.sparsity, n.dead, h.edges[length(h.edges)] AS top, n.act_max FROM activation_histograms h "
                     "JOIN neurons n ON n.id = h.neuron_id WHERE n.kind = 'channel'", max_rows=100_000).rows()
    assert len(rows) == 2656
    for r in rows:
        assert r["n_images"] == r["binned"] == r["bucketed"] == 500
        assert (r["density"] > 0) == (r["act_max"] > 0)  # some image fires iff the highest activation is above 0
        if not r["dead"]:
            assert r["top"] == pytest.approx(r["act_max"], rel=1e-6)
            # firing somewhere on an image is at least as common as firing at a given position
            assert r["density"] >= 1 - r["sparsity"] - 1e-9


def test_neuron_pages_in_a_real_browser_behind_a_token(index, tmp_path):
    """Issue 24 on the real SqueezeNet: log in through the form, then a neuron page shows context
    heatmaps, deconvnet reconstructions, the activation histogram and per-class bars; a dead neuron
    says so without a broken image; a bad filter shows its error in the page; the API docs load
    with nothing from outside the service."""
    from test_service import CHROMIUM, RealServer

    if CHROMIUM is None:
        import os

        if os.environ.get("CI"):
            raise AssertionError("CI needs Debian's chromium")
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    from neuronindex.service.app import create_app

    def loaded(page, selector):  # scrolled through first: lazy images load only near the viewport
        height = page.evaluate("document.body.scrollHeight")
        for y in range(0, height + 900, 700):
            page.evaluate(f"window.scrollTo(0, {y})")
            page.wait_for_timeout(50)
        page.wait_for_function(f"Array.from(document.querySelectorAll('{selector}')).every(i => i.complete)",
                               timeout=120_000)
        return page.eval_on_selector_all(selector, "els => els.map(e => e.naturalWidth)")

    dead = index.query("SELECT key FROM neurons WHERE dead AND kind = 'channel' LIMIT 1").rows()
    with RealServer(create_app(index.path, token="t0ken")) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server.base) else None)
        page.goto(server.base + "/neuron/squeezenet/features.5/3")
        assert "/login" in page.url
        page.fill("#token", "wrong")
        page.click("#login")
        assert "wrong token" in page.inner_text("#problem")
        page.fill("#token", "t0ken")
        page.click("#login")
        page.wait_for_url("**/neuron/squeezenet/features.5/3")
        cookie = next(c for c in page.context.cookies() if c["name"] == "neuronindex_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != "t0ken"
        # the histogram (one bar per bin, every image counted) and the per-class bars
        titles = page.eval_on_selector_all("svg#histogram rect title", "els => els.map(e => e.textContent)")
        assert len(titles) == 32 and sum(int(t.split(": ")[1].split()[0]) for t in titles) == 500
        assert page.eval_on_selector_all("#class-means .bar", "els => els.length") == 12
        crops, deconv = loaded(page, "img.crop"), loaded(page, "img.deconv")
        assert len(deconv) == 9 and all(w > 0 for w in deconv) and all(w > 0 for w in crops), (crops, deconv)
        page.screenshot(path=str(tmp_path / "neuron.png"), full_page=True)
        page.click("text=whole images")
        page.wait_for_url("**view=context**")
        ctx = loaded(page, "img.context")
        assert len(ctx) >= 24 and all(w == 227 for w in ctx), ctx
        if dead:
            page.goto(server.base + f"/neuron/{dead[0]['key']}")
            assert page.inner_text("h1 .dead") == "dead" and "never fires" in page.inner_text(".dead-note")
            assert all(w > 0 for w in loaded(page, "img"))
            assert "colour selectivity" not in page.inner_text("table.props")
        page.goto(server.base + "/layer/squeezenet/features.3?q=colour%3E%3E2")
        assert "unknown field" in page.inner_text("#problem") and not page.inner_text("body").startswith("{")
        page.goto(server.base + "/neuron/squeezenet/nope/1")
        assert "no neuron" in page.inner_text("#problem")
        page.goto(server.base + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=60_000)
        assert "neuronindex" in page.inner_text(".swagger-ui .info .title")
        assert not outside, outside[:5]
        browser.close()


def test_colour_dissection_agrees_with_the_colour_index(index):
    """Network Dissection with colour concepts on the real network (the first 200 photos, the
    first three layers): every unit gets its best concepts and a threshold; where a unit is both
    labelled with a colour concept and colour selective by the colour index, the two name the same
    colour well above chance (1 in 11). Measured with this case: 14 of 25 (56%); over all nine
    layers and 500 photos, 28 of 54 (bench/dissect.py), the misses mostly neighbouring names
    (red concept vs a brown or pink NF: the NF averages and desaturates)."""
    from neuronindex.jobs.dissect import dissect

    report = dissect(index.path, "colour", ["features.1", "features.3", "features.4"], limit=200, progress=False)
    assert [r["units"] for r in report] == [96, 128, 128] and all(r["interpretable"] > 5 for r in report)
    with neuronindex.open(index.path) as fresh:  # the dissection was published beside the open reader
        rows, ranked = _colour_labels(fresh)
    both = [r for r in rows if r["color_label"]]
    agree = [r for r in both if r["concept"] in (r["color_name"], r["color_second"])]
    assert ranked >= 0.95 * (96 + 128 + 128)
    assert len(both) >= 10 and len(agree) / len(both) >= 0.3, (len(agree), len(both))


def _colour_labels(index):
    rows = index.query(
        "SELECT n.color_name, n.color_second, n.color_label, c.name AS concept, u.threshold FROM unit_concepts u "
        "JOIN dissections d ON d.id = u.dissection_id JOIN concepts c ON c.id = u.concept_id JOIN neurons n ON "
        "n.id = u.neuron_id WHERE d.source = 'colour' AND u.rank = 1 AND u.iou > d.iou_threshold").rows()
    ranked = index.query("SELECT count(DISTINCT u.neuron_id) AS n FROM unit_concepts u JOIN dissections d ON "
                         "d.id = u.dissection_id WHERE d.source = 'colour'").rows()[0]["n"]
    return rows, ranked
