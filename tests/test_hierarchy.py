"""Seed 000's category hierarchy (Algorithm 1) and filter prediction tree (Algorithm 2), and seed
002's representation maps: the algorithms against hand computations, then stored, queried and shown."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from neuronindex.science import hierarchy
from neuronindex.jobs import maps
from neuronindex.jobs import categories as categories_job
from neuronindex.science import layout as layout_mod


# ------------------------------------------------------------------ Algorithm 1 by hand

# A B C D; WPGMA and UPGMA differ on the last merge (4.75 against 5.0)
D4 = np.array([[0, 1, 4, 5], [1, 0, 3, 6], [4, 3, 0, 4], [5, 6, 4, 0]], dtype=float)


def test_category_hierarchy_merges_by_the_seeds_averaging_rule():
    """By hand: A-B merge at 1; C is (4 + 3) / 2 = 3.5 from AB and merges there; D is
    ((5 + 6) / 2 + 4) / 2 = 4.75 from ABC (the average of its two children's distances; the
    average over all members, UPGMA, would be 5)."""
    h = hierarchy.category_hierarchy(D4)
    np.testing.assert_allclose(h.linkage[:, 2], [1.0, 3.5, 4.75])
    assert [sorted(map(int, row[:2])) for row in h.linkage] == [[0, 1], [2, 4], [3, 5]]
    assert list(h.linkage[:, 3]) == [2, 3, 4]
    np.testing.assert_allclose(h.cophenetic, [[0, 1, 3.5, 4.75], [1, 0, 3.5, 4.75], [3.5, 3.5, 0, 4.75],
                                              [4.75, 4.75, 4.75, 0]])
    assert list(h.parents()) == [4, 4, 5, 6, 5, 6, -1]
    assert sorted(h.leaves(5)) == [0, 1, 2]


def test_minimum_spanning_tree_centre_and_hub_by_hand():
    """Edges by weight: AB 1, BC 3, AC 4 (closes a cycle), CD 4: the tree is the path A-B-C-D.
    Eccentricity along it: A 1+3+4 = 8, B max(1, 7) = 7, C max(4, 4) = 4, D 8: the centre is C;
    B and C have two edges each, and the tie goes to the more central, C."""
    h = hierarchy.category_hierarchy(D4)
    edges = {(int(a), int(b)) for a, b in zip(*np.nonzero(np.triu(h.mst)))}
    assert edges == {(0, 1), (1, 2), (2, 3)}
    assert list(h.degree) == [1, 2, 2, 1]
    np.testing.assert_allclose(h.eccentricity, [8, 7, 4, 8])
    assert h.centre() == 2 and h.hub() == 2


def test_cosine_distances_by_hand():
    d = hierarchy.cosine_distances(np.array([[1.0, 0], [0, 1], [1, 1], [0, 0]]))
    assert d[0, 1] == pytest.approx(1.0)
    assert d[0, 2] == pytest.approx(1 - 1 / math.sqrt(2))
    assert d[3, 0] == pytest.approx(1.0) and d[3, 3] == 0  # a zero vector is 1 from the others


def test_wordnet_tree_distances_and_agreement_by_hand():
    """a and b share the parent 10, c hangs under 20; all meet at 100: path lengths a-b 2, a-c and
    b-c 4. A hierarchy merging a and b first agrees perfectly (Spearman 1, the one sibling pair
    merges below the others: probability 1)."""
    chains = [[1, 10, 100], [2, 10, 100], [3, 20, 100]]
    np.testing.assert_array_equal(hierarchy.wordnet_tree_distances(chains), [[0, 2, 4], [2, 0, 4], [4, 4, 0]])
    h = hierarchy.category_hierarchy(np.array([[0, 0.1, 0.8], [0.1, 0, 0.9], [0.8, 0.9, 0]]))
    w = hierarchy.wordnet_agreement(h, chains)
    assert w["correlation"] == pytest.approx(1.0) and w["sibling_auc"] == 1.0 and w["sibling_pairs"] == 1
    wrong = hierarchy.category_hierarchy(np.array([[0, 0.8, 0.1], [0.8, 0, 0.9], [0.1, 0.9, 0]]))
    # a-c merge at 0.1, b joins at (0.8 + 0.9) / 2 = 0.85: the sibling pair a-b (0.85) is above a-c
    # (counts 0) and ties b-c (counts half): (0 + 0.5) / 2
    assert hierarchy.wordnet_agreement(wrong, chains)["sibling_auc"] == 0.25


# ------------------------------------------------------------------ Algorithm 2 by hand

def test_prediction_tree_merges_and_critical_filters_by_hand():
    """x0 = (3, 4, 0), x1 = (3, 4, 5), x2 = (0, 1, 2).
    Distances over all three filters: d01 = 1 - 25 / (5 sqrt 50) = 0.29289,
    d02 = 1 - 4 / (5 sqrt 5) = 0.64223, d12 = 1 - 14 / (sqrt 50 sqrt 5) = 0.11456: x1 and x2 merge.
    Without filter 0: cos = 14 / sqrt(41 * 5) -> d = 0.02220 (change 0.09236); without 1: 10 /
    sqrt(34 * 4) -> 0.14251 (0.02795); without 2: 4 / sqrt(25 * 1) -> 0.2 (0.08544): filter 0 is
    critical; node 3 reaches {1, 2}, its vector (1.5, 2.5, 3.5).
    x0 and node 3 over {1, 2}: (4, 0) . (2.5, 3.5) = 10, cos = 10 / (4 sqrt 18.5) -> d = 0.41876;
    without 1, x0 is zero (d = 1, change 0.58124); without 2 the two are parallel (d = 0, change
    0.41876): filter 1 is critical; node 4 reaches {2} and is the root's only child."""
    nodes = hierarchy.prediction_tree(np.array([[3, 4, 0], [3, 4, 5], [0, 1, 2]], dtype=float))
    assert [n["node"] for n in nodes] == [0, 1, 2, 3, 4, 5]
    m1, m2, root = nodes[3], nodes[4], nodes[5]
    assert m1["children"] == [1, 2] and m1["critical"] == 0 and m1["reachable"] == [1, 2]
    assert m1["distance"] == pytest.approx(1 - 14 / math.sqrt(250), abs=1e-12)
    assert m1["change"] == pytest.approx((1 - 14 / math.sqrt(250)) - (1 - 14 / math.sqrt(205)), abs=1e-12)
    assert m2["children"] == [0, 3] and m2["critical"] == 1 and m2["reachable"] == [2]
    assert m2["distance"] == pytest.approx(1 - 10 / (4 * math.sqrt(18.5)), abs=1e-12)
    assert m2["change"] == pytest.approx(10 / (4 * math.sqrt(18.5)), abs=1e-12)
    assert root["children"] == [4]


def test_prediction_tree_stops_when_every_child_reaches_one_filter():
    """Two filters: (1, .1) and (1, .2) merge (the lowest of two equally close pairs), then (.1, 1)
    and (.2, 1). Removing either filter leaves parallel one-number vectors (distance 0), so the
    change ties and the lower filter, 0, is critical both times; each node reaches only filter 1
    and they cannot merge: the seed's stopping condition, two children of the root."""
    nodes = hierarchy.prediction_tree(np.array([[1, .1], [1, .2], [.1, 1], [.2, 1]]))
    merges = [n for n in nodes if n["children"] and "critical" in n]
    assert [m["children"] for m in merges] == [[0, 1], [2, 3]]
    assert [m["critical"] for m in merges] == [0, 0] and [m["reachable"] for m in merges] == [[1], [1]]
    assert nodes[-1]["children"] == [4, 5]


def _brute_tree(x):
    """Algorithm 2 written out plainly: every pair, every filter, loops only."""
    x = [list(map(float, r)) for r in x]
    c = len(x[0])
    vec = {i: r for i, r in enumerate(x)}
    reach = {i: set(range(c)) for i in range(len(x))}
    active, out, nxt = list(range(len(x))), [], len(x)

    def dist(u, v, fs):
        dot = sum(u[f] * v[f] for f in fs)
        nu = math.sqrt(sum(u[f] ** 2 for f in fs))
        nv = math.sqrt(sum(v[f] ** 2 for f in fs))
        return 1.0 if nu * nv == 0 else 1 - dot / (nu * nv)

    while True:
        best = None
        for i, a in enumerate(active):
            for b in active[i + 1:]:
                common = reach[a] & reach[b]
                if len(common) >= 2:
                    d = dist(vec[a], vec[b], common)
                    if best is None or d < best[0] - 1e-12:
                        best = (d, a, b, common)
        if best is None:
            return out, sorted(active)
        d, a, b, common = best
        changes = [(abs(dist(vec[a], vec[b], common - {f}) - d), f) for f in sorted(common)]
        top = max(ch for ch, _ in changes)
        crit = min(f for ch, f in changes if ch >= top - 1e-12)
        vec[nxt] = [(p + q) / 2 for p, q in zip(vec[a], vec[b])]
        reach[nxt] = common - {crit}
        out.append((sorted((a, b)), crit))
        active = [n for n in active if n not in (a, b)] + [nxt]
        nxt += 1


@pytest.mark.parametrize("seed", range(4))
def test_prediction_tree_equals_a_plain_loop_implementation(seed):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(9, 5))) + rng.random((9, 5)) * (rng.random((9, 5)) < 0.5)
    nodes = hierarchy.prediction_tree(x)
    merges, top = _brute_tree(x)
    assert [(n["children"], n["critical"]) for n in nodes if "critical" in n] == merges
    assert nodes[-1]["children"] == top


# ------------------------------------------------------------------ stored, on a tiny index

@pytest.fixture(scope="module")
def tree_index(tmp_path_factory, tiny_loaded):
    from conftest import write_folder
    from neuronindex.jobs.ingest import IngestParams, ingest

    root = tmp_path_factory.mktemp("trees")
    write_folder(root / "images", per_class=6, kinds=("red", "green", "blue", "white"))
    ingest(tiny_loaded, str(root / "images"), "conv1,conv2", root / "index",
           params=IngestParams(top_k=6, spatial_means=True), progress=False)
    return root / "index"


def test_ingest_stores_the_hierarchy_of_the_deepest_layer_from_the_class_means(tree_index):
    """Class distances are 1 - cos of the stored class means (recomputed here with numpy), the first
    merge is the closest pair, heights never fall, and the root holds every class."""
    import neuronindex

    with neuronindex.open(tree_index) as idx:
        h = idx.categories()
        assert h.meta["layer"] == "conv2" and h.meta["pooling"] == "mean"  # spatial means were stored
        means = {}
        for r in idx.query("SELECT c.name, n.channel, cm.mean_spatial FROM class_means cm JOIN neurons n ON "
                           "n.id = cm.neuron_id JOIN layers l ON l.id = n.layer_id JOIN classes c ON c.id = cm.class_id "
                           "WHERE l.name = 'conv2' AND n.kind = 'channel'").rows():
            means.setdefault(r["name"], {})[r["channel"]] = r["mean_spatial"]
        names = sorted(means)
        assert names == ["blue", "green", "red", "white"] and sorted(r["class"] for r in h.rows()) == names
        vec = {c: np.array([means[c][k] for k in sorted(means[c])]) for c in names}
        stored = {(r["a"], r["b"]): r for r in idx.query(
            "SELECT a.name AS a, b.name AS b, d.distance, d.cophenetic FROM class_distances d JOIN classes a ON "
            "a.id = d.class_a JOIN classes b ON b.id = d.class_b").rows()}
        assert len(stored) == 4 * 3
        for (a, b), r in stored.items():
            cos = vec[a] @ vec[b] / np.linalg.norm(vec[a]) / np.linalg.norm(vec[b])
            assert r["distance"] == pytest.approx(1 - cos, abs=1e-9)
        merges = [n for n in h.meta["nodes"] if n["class"] is None]
        heights = [n["height"] for n in merges]
        assert heights == sorted(heights) and merges[-1]["size"] == 4 and merges[-1]["parent"] is None
        assert heights[0] == pytest.approx(min(r["distance"] for r in stored.values()))
        near = idx.nearest_classes("red", k=3).rows()
        assert [r["distance"] for r in near] == sorted(stored[("red", c)]["distance"] for c in names if c != "red")
        first = min(stored, key=lambda k: stored[k]["distance"])
        assert sorted(r["class"] for r in idx.subtree(first[0], up=1).rows()) == sorted(first)
        assert len(idx.subtree("red", up=10).rows()) == 4  # above the root: the whole tree


def test_categories_command_other_layer_pooling_and_errors(tree_index, cli_runner, tmp_path):
    import shutil

    from neuronindex_cli.main import cli

    index = tmp_path / "copy"
    shutil.copytree(tree_index, index)
    r = cli_runner.invoke(cli, ["categories", str(index), "--layer", "conv1", "--pooling", "max"])
    assert r.exit_code == 0, r.output
    assert "conv1 (max pooling): 4 classes" in r.output and "minimum spanning tree: centre" in r.output
    import neuronindex

    r = cli_runner.invoke(cli, ["categories", str(index), "--pooling", "max"])
    assert r.exit_code == 0 and "conv2 (max pooling)" in r.output
    with neuronindex.open(index) as idx:
        assert idx.categories(layer="conv1").meta["pooling"] == "max"
        # the deepest layer stays the default, with the pooling ingest chose (mean: spatial means stored)
        assert (idx.categories().meta["layer"], idx.categories().meta["pooling"]) == ("conv2", "mean")
        assert idx.categories(pooling="max").meta["pooling"] == "max"
        assert idx.nearest_classes("red", pooling="max").meta["pooling"] == "max"
    for args, message, code in ((["--layer", "conv9"], "no stored layer 'conv9'", 3),
                                (["--model", "nope"], "no model 'nope'", 3)):
        r = cli_runner.invoke(cli, ["categories", str(index), *args])
        assert r.exit_code == code and message in r.output and "Traceback" not in r.output, r.output
    r = cli_runner.invoke(cli, ["categories", str(tmp_path / "none")])
    assert r.exit_code != 0 and "no index at" in r.output


def _pooled_by_hand(loaded, paths, node):
    """Each image through the model with a forward hook on the layer's module; max over space."""
    import torch
    from PIL import Image

    module = dict(loaded.module.named_modules())[node]
    got = []
    handle = module.register_forward_hook(lambda m, i, o: got.append(o.detach()))
    pre = loaded.preprocessing
    try:
        for p in paths:
            a = np.asarray(pre.geometric(Image.open(p).convert("RGB")), dtype=np.float32) / 255 * pre.pixel_scale
            x = (torch.as_tensor(a).permute(2, 0, 1)[None] - torch.tensor(pre.mean).view(1, 3, 1, 1)) / \
                torch.tensor(pre.std).view(1, 3, 1, 1)
            with torch.no_grad():
                loaded.module(x)
    finally:
        handle.remove()
    return np.concatenate([g.amax((2, 3)).numpy() for g in got])


def test_tree_command_stores_algorithm_2_on_the_class_images(tree_index, tiny_loaded, cli_runner, tmp_path):
    """`neuronindex tree` takes the class's images, pools the layer's maps by hand-checkable
    forwards (a hook on conv2 here) and stores exactly the plain implementation's merges."""
    import shutil

    import neuronindex
    from neuronindex_cli.main import cli

    index = tmp_path / "copy"
    shutil.copytree(tree_index, index)
    r = cli_runner.invoke(cli, ["tree", str(index), "--class", "green", "--layer", "conv2"])
    assert r.exit_code == 0, r.output
    assert "class green: 6 images, 6 filters" in r.output and "/tree/tiny_cnn/conv2/green" in r.output
    with neuronindex.open(index) as idx:
        t = idx.prediction_tree("green", "conv2")
        nodes = t.rows()
        leaves = [n for n in nodes if n["image_id"] is not None]
        assert t.meta["n_images"] == 6 == len(leaves) and all("/green/" in n["image"] for n in leaves)
        assert idx.layers().rows()[1]["node"] == "conv2"
        x = _pooled_by_hand(tiny_loaded, [n["image"] for n in leaves], "conv2")
        merges, top = _brute_tree(x)
        stored = [(sorted(n2["node"] for n2 in nodes if n2["parent"] == n["node"]), n["critical_channel"])
                  for n in nodes if n["critical_channel"] is not None]
        assert stored == merges
        assert sorted(n["node"] for n in nodes if n["parent"] == t.meta["root"]) == top
        for n in nodes:
            if n["critical_channel"] is not None:
                assert n["critical"] == f"tiny_cnn/conv2/{n['critical_channel']}"
    r = cli_runner.invoke(cli, ["tree", str(index), "--class", "gren"])
    assert r.exit_code == 3 and "did you mean green" in r.output
    r = cli_runner.invoke(cli, ["tree", str(index), "--class", "green", "--max-images", "1"])
    assert r.exit_code == 2 and "--max-images" in r.output
    r = cli_runner.invoke(cli, ["tree", str(index), "--class", "green", "--max-images", "3", "--seed", "1"])
    assert r.exit_code == 0 and "3 images (a sample of 6)" in r.output


# ------------------------------------------------------------------ maps

def test_tsne_and_umap_maps_keep_clusters_apart():
    """Two tight clusters of unit vectors far apart: on the map every point's nearest neighbour is in
    its own cluster, and the coordinates fill [0, 1]."""
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:2] * 10
    x = np.concatenate([c + rng.normal(0, 0.3, (30, 16)) for c in centres])
    label = np.repeat([0, 1], 30)
    for method in ("tsne", "umap"):
        if method == "umap":
            pytest.importorskip("umap")
        xy, params = layout_mod.layout(x, method, seed=0)
        assert xy.shape == (60, 2) and xy.min() >= -1e-9 and xy.max() <= 1 + 1e-9
        assert max(xy[:, 0].max() - xy[:, 0].min(), xy[:, 1].max() - xy[:, 1].min()) == pytest.approx(1)
        d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(60) * 9
        assert (label[d.argmin(1)] == label).all(), method
    assert layout_mod.layout(x[:3])[0].shape == (3, 2)  # too few for a neighbourhood: a line


def test_map_command_stores_keeps_and_remakes_stale_maps(tree_index, cli_runner, tmp_path):
    import shutil

    import neuronindex
    from neuronindex import store
    from neuronindex_cli.main import cli

    index = tmp_path / "copy"
    shutil.copytree(tree_index, index)
    r = cli_runner.invoke(cli, ["map", str(index), "--space", "both", "-q"])
    assert r.exit_code == 0, r.output
    with neuronindex.open(index) as idx:
        for layer in ("conv1", "conv2"):
            n_neurons = idx.query(f"SELECT count(*) AS n FROM embeddings e JOIN layers l ON l.id = e.layer_id "
                                  f"WHERE space = 'prototype' AND l.name = '{layer}'").rows()[0]["n"]
            n_crops = idx.query(f"SELECT count(*) AS n FROM embeddings e JOIN layers l ON l.id = e.layer_id "
                                f"WHERE space = 'patch' AND l.name = '{layer}'").rows()[0]["n"]
            m = idx.map(layer)
            assert len(m) == n_neurons > 0 and not m.meta["stale"] and m.meta["method"] == "tsne"
            crops = idx.map(layer, "crops")
            assert len(crops) == n_crops > 0 and all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in crops)
            assert all(p["image_class"] in ("red", "green", "blue", "white") for p in crops)
    r = cli_runner.invoke(cli, ["map", str(index), "--space", "both", "-q"])
    assert r.output.count("up to date") == 4
    with store.staged(index) as con:  # as a re-ingest would: other embeddings
        con.execute("UPDATE embeddings SET vector = list_reverse(vector) WHERE space = 'prototype'")
    with neuronindex.open(index) as idx:
        assert idx.map("conv1").meta["stale"]
    r = cli_runner.invoke(cli, ["map", str(index), "--layers", "conv1", "-q"])
    assert "conv1 neurons" in r.output and "made" in r.output
    with neuronindex.open(index) as idx:
        assert not idx.map("conv1").meta["stale"]
    r = cli_runner.invoke(cli, ["map", str(index), "--layers", "conv2", "--perplexity", "1.5", "-q"])
    assert "conv2 neurons: 6 points, made" in r.output  # other parameters: remade
    with neuronindex.open(index) as idx:
        params = json.loads(idx.query("SELECT params FROM maps m JOIN layers l ON l.id = m.layer_id WHERE "
                                      "m.space = 'neurons' AND l.name = 'conv2'").rows()[0]["params"])
        assert params["asked"] == params["perplexity"] == 1.5
    for args, message in ((["--layers", "conv7"], "no stored layer 'conv7'"), (["--perplexity", "0"], "perplexity")):
        r = cli_runner.invoke(cli, ["map", str(index), *args, "-q"])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, r.output


def test_http_and_pages_of_hierarchy_trees_and_maps(tree_index, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from neuronindex.service.app import create_app

    index = tmp_path / "copy"
    shutil.copytree(tree_index, index)
    categories_job.tree(index, "red", "conv2")
    maps.make_maps(index, spaces=("neurons", "crops"), progress=False)
    client = TestClient(create_app(index))
    r = client.get("/api/categories")
    assert r.status_code == 200 and r.json()["layer"] == "conv2" and len(r.json()["rows"]) == 4
    r = client.get("/api/categories/nearest", params={"class": "red", "k": 2})
    assert r.status_code == 200 and len(r.json()["rows"]) == 2
    assert client.get("/api/categories/subtree", params={"class": "red", "up": 9}).json()["rows"]
    for url in ("/api/categories/dendrogram.png", "/api/categories/mst.png?pooling=mean",
                "/api/maps/tiny_cnn/conv1/map.png",
                "/api/maps/tiny_cnn/conv1/map.png?space=crops&color=class"):
        r = client.get(url)
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG", url
    r = client.get("/api/trees/tiny_cnn/conv2/red")
    assert r.status_code == 200 and r.json()["n_images"] == 6
    r = client.get("/api/maps/tiny_cnn/conv2", params={"space": "crops"})
    assert r.status_code == 200 and r.json()["points"] == len(r.json()["rows"]) > 0
    for url, status, message in (("/api/categories/nearest?class=rd", 404, "no class 'rd'"),
                                 ("/api/trees/tiny_cnn/conv2/blue", 404, "neuronindex tree"),
                                 ("/api/maps/tiny_cnn/conv2?space=pixels", 400, "unknown map space"),
                                 ("/api/categories/pie.png", 404, "no figure"),
                                 ("/api/categories/mst.png?pooling=max", 404, "no category hierarchy")):
        r = client.get(url)
        assert r.status_code == status and message in r.json()["error"], (url, r.text)
    for url, text in (("/categories/tiny_cnn", "how the network groups its classes"),
                      ("/tree/tiny_cnn/conv2/red", "critical filters nearest the root"),
                      ("/map/tiny_cnn/conv1", "map of its neurons"),
                      ("/map/tiny_cnn/conv1?space=crops", "map of its top crops"),
                      ("/model/tiny_cnn", "How the network groups its classes"),
                      ("/layer/tiny_cnn/conv1", "atlas of the top crops")):
        r = client.get(url)
        assert r.status_code == 200 and text in r.text, url


def test_hierarchy_tree_and_map_pages_in_a_real_browser(tree_index, tmp_path):
    """Chromium: the dendrogram and the tree drawing load, the tree shows a thumbnail per merge, the
    neuron map an NF per live neuron and the crop atlas its crops; none is broken."""
    import shutil

    from neuronindex.service.app import create_app
    from test_service import CHROMIUM, RealServer

    if CHROMIUM is None:
        import os

        if os.environ.get("CI"):
            raise AssertionError("CI needs Debian's chromium")
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    index = tmp_path / "copy"
    shutil.copytree(tree_index, index)
    categories_job.tree(index, "red", "conv2")
    maps.make_maps(index, spaces=("neurons", "crops"), progress=False)

    def widths(page, selector):
        page.wait_for_load_state("networkidle")
        return page.eval_on_selector_all(selector, "els => els.map(e => e.complete ? e.naturalWidth : 0)")

    def svg_images(page, selector):  # an SVG <image> that failed has no box of its own to measure: decode it
        page.wait_for_load_state("networkidle")
        return page.eval_on_selector_all(selector, """els => Promise.all(els.map(e => new Promise(ok => {
            const i = new Image(); i.onload = () => ok(i.naturalWidth); i.onerror = () => ok(0);
            i.src = e.getAttribute('href'); })))""")

    with RealServer(create_app(index)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server.base + "/categories/tiny_cnn")
        w = widths(page, "img.figure")
        assert len(w) == 2 and all(x > 0 for x in w), w
        page.goto(server.base + "/tree/tiny_cnn/conv2/red")
        w = svg_images(page, "svg#tree image")
        assert len(w) >= 1 and all(x > 0 for x in w), w
        assert page.eval_on_selector_all("svg#tree circle", "els => els.length") >= 6  # the images and the root
        page.goto(server.base + "/map/tiny_cnn/conv2")
        w = svg_images(page, "svg#map image")
        assert 1 <= len(w) <= 6 and all(x > 0 for x in w), w  # an NF per live neuron of conv2's six
        page.goto(server.base + "/map/tiny_cnn/conv1?space=crops")
        w = svg_images(page, "svg#map image")
        assert len(w) >= 4 and all(x > 0 for x in w), w
        page.screenshot(path=str(tmp_path / "atlas.png"))
        browser.close()


def test_report_draws_the_hierarchy_and_the_maps(tree_index, tmp_path):
    import shutil

    import neuronindex
    from neuronindex import report

    index = tmp_path / "copy"
    shutil.copytree(tree_index, index)
    maps.make_maps(index, ["conv2"], progress=False)
    with neuronindex.open(index) as idx:
        written = report.render(idx, tmp_path / "report.html", png_dir=tmp_path / "png")
    text = (tmp_path / "report.html").read_text()
    for title in ("category hierarchy: how the network groups its classes",
                  "class tree: minimum spanning tree of the classes", "map of conv2 neurons: similar ones together"):
        assert f"<h3>{title}</h3>" in text
    names = {p.rsplit("/", 1)[1] for p in written}
    assert {"tiny_cnn-category_hierarchy.png", "tiny_cnn-class_tree.png", "tiny_cnn-map_of_conv2_neurons.png"} <= names
