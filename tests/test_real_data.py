"""Real pretrained CIFAR-10 ResNets on real CIFAR-10 images (skipped without ../shared/data)."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest

from conftest import shared
from neuronindex.data import open_source
from neuronindex.nets.extract import predict
from neuronindex.jobs.ingest import IngestParams, ingest
from neuronindex.nets.models import load_model
from neuronindex.jobs import categories as categories_job

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


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


def test_resnet20_selectivity_by_depth(tmp_path):
    """Seed 004's depth trends on a real network: colour selectivity falls, class selectivity rises
    (both gamma and CSI). With 10 classes and N = 100, gamma lies in [0.909, 1]."""
    weights = shared("cifar10-resnet", "resnet20-12fca82f.th")
    source = shared("cifar10", "lossless-train")
    ingest("cifar-resnet20", str(source), "conv1,layer3.0,layer3.1,layer3.2", tmp_path, weights=str(weights),
           params=IngestParams(batch_size=256, workers=2), progress=False)
    con = duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True)
    rows = con.execute("SELECT l.name, avg((color_index >= 0.4)::INT), avg(csi), avg(class_index), avg(class_m) "
                       "FROM neurons n JOIN layers l ON l.id = n.layer_id WHERE NOT dead GROUP BY l.name, l.position "
                       "ORDER BY l.position").fetchall()
    by_layer = {r[0]: r[1:] for r in rows}
    first, last = by_layer["conv1"], by_layer["layer3.2"]
    assert first[0] > last[0] + 0.2  # colour selective share: ~0.4 vs ~0.05
    assert last[1] > first[1] + 0.1  # CSI grows with depth: ~0.07 vs ~0.33
    assert last[2] > first[2] + 0.02  # gamma too: ~0.91 (M ~ 9.7 classes) vs ~0.96 (M ~ 4.4)
    assert last[3] < first[3] - 2
    for share, csi, gamma, m in by_layer.values():
        assert 0 <= share <= 1 and -1 <= csi <= 1 and 0.9 <= gamma <= 1 and 1 <= m <= 10
    con.close()
    # Network Dissection with colour concepts labels the network's units: every unit gets its best
    # concepts, and where a unit is both labelled with a colour and colour selective, the two agree
    # well above chance (1 in 11); measured here 3 of 4 (cifar-resnet56, every conv layer: 35 of 53,
    # bench/dissect.py)
    from neuronindex.jobs.dissect import dissect

    report = dissect(tmp_path, "colour", progress=False)
    assert [r["layer"] for r in report] == ["conv1", "layer3.0", "layer3.1", "layer3.2"]
    con = duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True)
    ranked, units = con.execute("SELECT count(DISTINCT u.neuron_id), (SELECT count(*) FROM neurons WHERE kind = 'channel') "
                                "FROM unit_concepts u").fetchone()
    assert ranked == units  # measured: all 208
    both = con.execute("SELECT c.name IN (n.color_name, coalesce(n.color_second, '')) FROM unit_concepts u JOIN dissections d "
                       "ON d.id = u.dissection_id JOIN concepts c ON c.id = u.concept_id JOIN neurons n ON n.id = u.neuron_id "
                       "WHERE u.rank = 1 AND u.iou > d.iou_threshold AND n.color_label IS NOT NULL").fetchall()
    con.close()
    assert len(both) >= 4 and sum(a for (a,) in both) / len(both) >= 0.3, both


def test_resnet20_and_resnet56_depth_trends_in_one_index(tmp_path):
    """Seed 004's trends on two real depths, compared with SQL as seed 002 compares two CNNs.

    Asserted: class selectivity (mean gamma and mean CSI) grows from the first conv layer to the
    last stage; sparsity figures lie in [0, 1]."""
    import csv

    from neuronindex.report import summary

    images = []
    for split in ("lossless-train", "lossless-test"):
        root = shared("cifar10", split)
        images += [(str(p), p.parent.name) for p in sorted(root.glob("*/*.png"))]
    manifest = tmp_path / "cifar.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *images])
    index = tmp_path / "index"
    for depth, weights in ((20, "resnet20-12fca82f.th"), (56, "resnet56-4bfd9763.th")):
        ingest(f"cifar-resnet{depth}", str(manifest), "conv1,layer1,layer2,layer3", index,
               weights=str(shared("cifar10-resnet", weights)), params=IngestParams(batch_size=256, workers=2),
               progress=False)
    import neuronindex

    with neuronindex.open(index) as idx:
        rows = summary(idx)
        compared = idx.sql("SELECT model, layer, avg(csi) AS csi, avg(class_index) AS gamma, "
                           "avg((color_index >= 0.4)::INT) AS colour FROM neuron_view WHERE NOT dead "
                           "GROUP BY model, layer ORDER BY model, layer").rows()
    assert {r["model"] for r in compared} == {"resnet20", "resnet56"}
    for model in ("resnet20", "resnet56"):
        mine = {r["layer"]: r for r in rows if r["model"] == model}
        assert list(mine) == ["conv1", "layer1", "layer2", "layer3"]
        assert mine["layer3"]["mean_csi"] > mine["conv1"]["mean_csi"]
        assert mine["layer3"]["mean_gamma"] > mine["conv1"]["mean_gamma"]
        assert all(0 <= r["sparsity"] <= 1 and 0 <= r["colour_selective"] <= 1 for r in mine.values())
    print("\n" + "\n".join(str({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}) for r in rows))


def test_resnet20_directions_equal_brute_force_on_real_images(tmp_path):
    """Seed 001 on a real network: every direction's top and bottom images equal a brute-force
    projection of the block outputs captured by forward hooks on the model itself; and the number
    of large singular values (Kaiser: sv^2 / n > 1) per channel is reported by depth."""
    import torch

    from neuronindex.data import open_source
    from neuronindex.nets.extract import image_batches

    weights = shared("cifar10-resnet", "resnet20-12fca82f.th")
    source = shared("cifar10", "lossless-test")
    blocks = ["layer1.2", "layer2.2", "layer3.2"]
    ingest("cifar-resnet20", str(source), ",".join(blocks), tmp_path, weights=str(weights), progress=False,
           params=IngestParams(batch_size=128, top_k=10, bottom_k=5, directions="svd,random,nmf,sae"))
    loaded = load_model("cifar-resnet20", str(weights))
    captured = {b: [] for b in blocks}
    for b in blocks:
        stage, i = b.split(".")
        getattr(loaded.module, stage)[int(i)].register_forward_hook(
            lambda _m, _i, out, b=b: captured[b].append(out.detach()))
    with torch.no_grad():
        for batch, _, _ in image_batches(open_source(str(source)), loaded.preprocessing, 200):
            loaded.module.eval()(loaded.preprocessing.normalize(batch))
    con = duckdb.connect(str(tmp_path / "index.duckdb"), read_only=True)
    first = con.execute("SELECT min(id) FROM images").fetchone()[0]
    shares = {}
    for b in blocks:
        maps = torch.cat(captured[b]).numpy()
        units = con.execute("SELECT n.id, n.key, d.weights, d.\"offset\" FROM directions d JOIN neurons n "
                            "ON n.id = d.neuron_id JOIN layers l ON l.id = d.layer_id WHERE l.name = ?", [b]).fetchall()
        # at least one SVD direction, 4 + 4 random, and the NMF and SAE atoms (min(16, channels / 2) each):
        # every one's top and bottom lists are its affine map's, from the model's own block outputs
        atoms = min(16, maps.shape[1] // 2)
        assert len(units) >= 9 + 2 * atoms
        assert sum(k.rsplit("/", 1)[1].startswith(("nmf", "sae")) for _, k, _, _ in units) == 2 * atoms
        for nid, key, w, offset in units:
            proj = (np.einsum("c,bchw->bhw", np.array(w, dtype=np.float32), maps) + np.float32(offset))
            flat = proj.reshape(len(proj), -1)
            top = [r[0] - first for r in con.execute("SELECT image_id FROM topk WHERE neuron_id = ? ORDER BY rank",
                                                      [nid]).fetchall()]
            low = [r[0] - first for r in con.execute("SELECT image_id FROM bottomk WHERE neuron_id = ? ORDER BY rank",
                                                      [nid]).fetchall()]
            hi, lo = flat.max(1), flat.min(1)
            # float32 sums in another order: compare the values at the stored ranks and the sets
            assert np.allclose(np.sort(hi)[::-1][:10], hi[top], rtol=1e-4, atol=1e-4), key
            assert np.allclose(np.sort(lo)[:5], lo[low], rtol=1e-4, atol=1e-4), key
        # the neurons' bottom lists: lowest spatial maxima, located at the first argmax (pass 1's own read)
        bottoms = con.execute("SELECT n.channel, b.image_id - ?, b.y, b.x FROM bottomk b JOIN neurons n ON n.id = b.neuron_id "
                              "JOIN layers l ON l.id = n.layer_id WHERE l.name = ? AND n.kind = 'channel'",
                              [first, b]).fetchall()
        smax = maps.reshape(len(maps), maps.shape[1], -1).max(2)
        for c, img, y, x in bottoms:
            assert divmod(int(maps[img, c].ravel().argmax()), maps.shape[3]) == (y, x)
            assert smax[img, c] <= np.sort(smax[:, c])[4] + 1e-5  # among the 5 lowest
        n, spectrum, channels = con.execute("SELECT (SELECT max(n_images) FROM directions d WHERE d.layer_id = l.id), "
                                            "spectrum, channels FROM layers l WHERE name = ?", [b]).fetchone()
        shares[b] = sum(s * s / n > 1 for s in spectrum) / channels
    print("\nKaiser components per channel by depth:", {k: round(v, 3) for k, v in shares.items()})
    assert all(0 < v < 1 for v in shares.values())
    # seed 001's reading of a leading singular vector, on the last block: one end animals, the other vehicles
    vehicles = {"airplane", "automobile", "ship", "truck"}
    ends = [[c for (c,) in con.execute(f"SELECT c.name FROM {t} x JOIN neurons n ON n.id = x.neuron_id "
                                       "JOIN images i ON i.id = x.image_id JOIN classes c ON c.id = i.class_id "
                                       "WHERE n.key = 'resnet20/layer3.2/svd1' ORDER BY x.rank").fetchall()]
            for t in ("topk", "bottomk")]
    share = [sum(c in vehicles for c in end) / len(end) for end in ends]
    print("vehicle share at the top / bottom of layer3.2/svd1:", share)
    assert sorted(share) == [0.0, 1.0]


def test_resnet56_category_hierarchy_tree_and_maps(tmp_path):
    """Seed 000's CIFAR-10 findings on the real ResNet-56: at its last block, classes cut into
    animals and vehicles at the top of the hierarchy, cat and dog merge first (the seed: "cat and dog
    are in the lowest clustering level"); a horse prediction tree and the maps are stored."""
    import neuronindex
    from neuronindex.jobs import maps

    weights = shared("cifar10-resnet", "resnet56-4bfd9763.th")
    ingest("cifar-resnet56", str(shared("cifar10", "lossless-train")), "layer3.8", tmp_path, weights=str(weights),
           name="resnet56", params=IngestParams(batch_size=256, workers=2, spatial_means=True), progress=False)
    with neuronindex.open(tmp_path) as idx:
        h = idx.categories()
        nodes = h.meta["nodes"]
        root = next(n for n in nodes if n["parent"] is None)["node"]
        sides = []
        for child in (n for n in nodes if n["parent"] == root):
            stack, under = [child["node"]], []
            while stack:
                k = stack.pop()
                under += [n["class"] for n in nodes if n["node"] == k and n["class"]]
                stack += [n["node"] for n in nodes if n["parent"] == k]
            sides.append(sorted(under))
        vehicles = ["airplane", "automobile", "ship", "truck"]
        assert vehicles in sides and sorted(set(sum(sides, [])) - set(vehicles)) in sides
        first = min((n for n in nodes if n["class"] is None), key=lambda n: n["height"])
        assert sorted(n["class"] for n in nodes if n["parent"] == first["node"]) == ["cat", "dog"]
        assert idx.nearest_classes("cat", 1).rows()[0]["class"] == "dog"
        assert h.meta["centre"] in {r["class"] for r in h.rows()}
    done = categories_job.tree(tmp_path, "horse", "layer3.8", max_images=60)
    assert done["images"] == 60 and done["filters"] == 64 and done["merges"] == 59
    made = maps.make_maps(tmp_path, spaces=("neurons", "crops"), progress=False)
    assert [(m["space"], m["points"]) for m in made] == [("neurons", 64), ("crops", 6400)]


def test_two_cifar_resnets_side_by_side(tmp_path):
    """Seed 002 compares two CNNs layer by layer: resnet20 and resnet32 over the same real images.

    Checked: the layer rows align by relative depth (first with first, last with last); a
    neuron's matches are the other model's neurons ranked by Pearson correlation of the probe
    activations (brute force: numpy's corrcoef on the raw stored arrays); the finding: each layer
    of resnet20 is matched best by resnet32 layers at a similar relative depth (Spearman > 0.8);
    and the page shows all of it in a real browser."""
    from scipy.stats import spearmanr

    import neuronindex

    index = tmp_path / "index"
    for depth, weights in ((20, "resnet20-12fca82f.th"), (32, "resnet32-d509ac18.th")):
        ingest(f"cifar-resnet{depth}", str(shared("cifar10", "lossless-test")), "all-conv", index,
               weights=str(shared("cifar10-resnet", weights)), params=IngestParams(batch_size=256, workers=2),
               progress=False)
    with neuronindex.open(index) as idx:
        r = idx.compare("resnet20", "resnet32")
        rows = r.rows()
        assert len(rows) == 31 and [x["b"]["layer"] for x in rows] == [f"conv{i}" for i in range(1, 32)]
        assert rows[0]["a"]["layer"] == "conv1" and rows[-1]["a"]["layer"] == "conv19"
        assert [x["depth"] for x in rows] == sorted(x["depth"] for x in rows)
        sim = r.meta["similarity"]
        assert sim["shared"] == 846 and len(sim["matrix"]) == 19 and len(sim["matrix"][0]) == 31
        best = [int(np.nanargmax([v if v is not None else np.nan for v in line])) for line in sim["matrix"]]
        rho = spearmanr(np.linspace(0, 1, 19), np.array(best) / 30).statistic
        assert rho > 0.8, (rho, best)
        key = "resnet20/conv19/5"
        m = idx.matches(key, "resnet32", 5)
        mine = np.array(idx.query("SELECT p.activations FROM probe p JOIN neurons n ON n.id = p.neuron_id WHERE n.key = ?",
                                  [key]).rows()[0]["activations"], dtype=np.float64)
        others = idx.query("SELECT n.key, p.activations FROM probe p JOIN neurons n ON n.id = p.neuron_id "
                           "WHERE n.key LIKE 'resnet32/%' AND n.kind = 'channel'").rows()
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant (dead) neuron has no correlation
            brute = sorted(((np.nan_to_num(np.corrcoef(mine, np.array(o["activations"], dtype=np.float64))[0, 1]), o["key"])
                            for o in others), key=lambda t: -t[0])[:5]
        assert [x["key"] for x in m.rows()] == [k for _, k in brute]
        np.testing.assert_allclose([x["correlation"] for x in m.rows()], [c for c, _ in brute], rtol=1e-6)
    _compare_page_in_a_browser(index, key)


def _compare_page_in_a_browser(index, key):
    from test_service import CHROMIUM, RealServer

    if CHROMIUM is None:
        import os

        if os.environ.get("CI"):
            raise AssertionError("CI needs Debian's chromium")
        return
    from playwright.sync_api import sync_playwright

    from neuronindex.service.app import create_app

    with RealServer(create_app(index)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1350, "height": 900})
        page.goto(server.base + f"/compare?a=resnet20&b=resnet32&neuron={key}")
        assert page.eval_on_selector_all("table#layers tr", "els => els.length") == 31 + 2
        assert page.eval_on_selector_all("table#similarity td", "els => els.length") == 19 * 31
        page.wait_for_function("Array.from(document.querySelectorAll('#matches ~ .grid img')).every(i => i.complete)")
        widths = page.eval_on_selector_all("#matches ~ .grid img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) >= 10 and all(w > 0 for w in widths), widths
        assert not page.query_selector("#problem")
        page.goto(server.base + "/neuron/" + key)  # the neuron page links to the comparison
        page.click("text=compare with resnet32")
        page.wait_for_selector("#matches")
        browser.close()
