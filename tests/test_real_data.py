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
    from neuronindex.extract import image_batches

    weights = shared("cifar10-resnet", "resnet20-12fca82f.th")
    source = shared("cifar10", "lossless-test")
    blocks = ["layer1.2", "layer2.2", "layer3.2"]
    ingest("cifar-resnet20", str(source), ",".join(blocks), tmp_path, weights=str(weights), progress=False,
           params=IngestParams(batch_size=128, top_k=10, bottom_k=5, directions="svd,random"))
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
        assert len(units) >= 9  # at least one SVD direction, 4 + 4 random
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
    from neuronindex import hierarchy, maps

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
    done = hierarchy.tree(tmp_path, "horse", "layer3.8", max_images=60)
    assert done["images"] == 60 and done["filters"] == 64 and done["merges"] == 59
    made = maps.run(tmp_path, spaces=("neurons", "crops"), progress=False)
    assert [(m["space"], m["points"]) for m in made] == [("neurons", 64), ("crops", 6400)]
