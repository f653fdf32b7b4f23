"""Network Dissection's arithmetic (science.dissection) against exact quantiles and brute force."""
from __future__ import annotations

import numpy as np
import pytest

from neuronindex.science import dissection as d


def test_bucket_thresholds_bound_the_exact_quantile():
    """The threshold is the lower edge of the quantile's bucket: never above the exact top-q
    quantile, less than one bucket (1/64 of its octave) below it, and at least a share q of the values
    reach it; batches and merged halves count the same."""
    rng = np.random.default_rng(0)
    maps = np.concatenate([rng.normal(0.5, 2.0, size=(40, 3, 7, 7)),          # signed values
                           np.maximum(rng.normal(0, 1, size=(40, 3, 7, 7)), 0)], 0).astype(np.float32)
    maps[:, 2] = np.abs(maps[:, 2]) * 1e-3 + 3.0                               # a narrow positive unit
    whole, halves = d.TopQuantile(3), [d.TopQuantile(3), d.TopQuantile(3)]
    for s in range(0, 80, 9):
        whole.add(maps[s:s + 9])
        halves[s // 45].add(maps[s:s + 9])
    halves[0].merge(halves[1])
    np.testing.assert_array_equal(halves[0].counts, whole.counts)
    for q in (0.005, 0.05, 0.5, 0.9):
        t = whole.threshold(q)
        for k in range(3):
            v = np.sort(maps[:, k].ravel())[::-1]
            exact = v[int(np.ceil(q * v.size)) - 1]  # the value at rank ceil(q n) from the top
            assert t[k] <= exact, (q, k)
            bound = abs(exact) / 64 + 1e-30  # one bucket: 1/64 of the value's octave
            assert exact - t[k] < bound, (q, k, exact, t[k])
            assert (v >= t[k]).mean() >= q


def test_zero_and_empty_units():
    """A unit silent on 99.9% of its positions has T = 0 at q = 0.005; a unit never seen, NaN."""
    tq = d.TopQuantile(2)
    a = np.zeros((10, 2, 10, 10), np.float32)
    a[0, 0, 0, 0] = 5.0
    tq.add(a)
    assert tq.threshold(0.005)[0] == 0.0 and tq.threshold(0.001)[0] == pytest.approx(5.0, rel=0.011)
    assert np.isnan(d.TopQuantile(1).threshold(0.005)[0])


def _case(seed, order=None):
    """Maps of 4 units on 12 images (9 x 11, already at the masks' resolution) with annotations in
    three categories: some images lack category 0, category 1 has two label maps per image (a
    pixel can carry two parts), category 2 is image-level (its concept covers every pixel)."""
    rng = np.random.default_rng(seed)
    category_of = np.array([0, 0, 0, 1, 1, 1, 2])
    # images whose scales span 12 octaves: tallies land both in the dense slab and in the table beyond it
    maps = (rng.gamma(1.0, 1.0, size=(12, 4, 9, 11)) * 2.0 ** rng.uniform(-4, 8, size=(12, 1, 1, 1))).astype(np.float32)
    maps[maps < 0.3] = 0.0  # ReLU-like: many exact zeros
    if order is not None:
        maps = maps[order(maps)]
    annotations = []
    for i in range(12):
        ann = {}
        if i % 3:
            ann[0] = [rng.choice([0, 1, 2], size=(9, 11))]
        if i % 2 == 0:
            ann[1] = [rng.choice([0, 3, 4], size=(9, 11)), rng.choice([0, 5], size=(9, 11))]
        if i % 4 == 1:
            ann[2] = [np.full((9, 11), 6)]
        annotations.append(ann)
    return maps, annotations, category_of


@pytest.mark.parametrize("order", [None, lambda m: np.argsort(m.reshape(12, -1).max(1))], ids=["shuffled", "rising"])
@pytest.mark.parametrize("q", [0.005, 0.1])
def test_one_pass_dissection_equals_the_two_pass_brute_force(order, q):
    """IoU by definition, computed here from all maps kept: T_k from the exact quantile's bucket
    (checked against the exact quantile), masks up >= T_k, then over the images annotated for the
    concept's category |M ∩ L| / |M ∪ L|. The one-pass tally (which drops levels below each unit's
    rising floor; `rising` orders the images so that the floor rises the slowest) gives the same
    numbers, and two shards merged give them too."""
    maps, annotations, category_of = _case(1, order)
    K, C = 4, len(category_of) - 1
    whole = d.Dissection(K, category_of, maps.size // K, q, width=16)  # a narrow slab: the table is used too
    shards = [d.Dissection(K, category_of, maps.size // K, q) for _ in range(2)]
    for s in range(0, 12, 5):
        whole.add_maps(maps[s:s + 5])
        shards[s % 2].add_maps(maps[s:s + 5])
        for b in range(s, min(s + 5, 12)):
            whole.add_image(maps[b], annotations[b])
            shards[s % 2].add_image(maps[b], annotations[b])
    shards[0].merge(shards[1])
    T = whole.thresholds()
    expected = np.zeros((K, C + 1))
    for k in range(K):
        v = np.sort(maps[:, k].ravel())[::-1]
        exact = v[int(np.ceil(q * v.size)) - 1]
        assert T[k] <= exact and exact - T[k] < abs(exact) / 64 + 1e-30
        for c in range(1, C + 1):
            inter = union = 0
            for m, ann in zip(maps, annotations):
                if category_of[c] not in ann:
                    continue
                lab = np.zeros(m.shape[1:], bool)
                for lm in ann[category_of[c]]:
                    lab |= lm == c
                on = m[k] >= T[k]
                inter += np.sum(on & lab)
                union += np.sum(on | lab)
            expected[k, c] = inter / union if union else 0.0
    np.testing.assert_allclose(whole.iou(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(shards[0].iou(), expected, rtol=0, atol=1e-12)
    assert (expected[:, 1:] > 0).sum() >= K * C // 3  # the case exercises many pairs
    assert whole.fill > 0 and np.count_nonzero(shards[0].slab) > 0  # the narrow slab spilled to the table; a wide one holds


def test_a_unit_that_fires_exactly_on_a_concept_has_iou_one():
    """A planted unit: its map is high exactly on concept 2's pixels. Thresholded at its own top
    quantile (the concept covers a share of the pixels, q = that share), IoU with concept 2 is 1,
    with the other concept of the category 0."""
    rng = np.random.default_rng(2)
    category_of = np.array([0, 0, 0])
    labels = [rng.choice([0, 1, 2], p=[0.5, 0.3, 0.2], size=(8, 8)) for _ in range(30)]
    maps = np.stack([np.where(lab == 2, 3.0 + rng.random((8, 8)), rng.random((8, 8)))[None] for lab in labels])
    share = np.mean([np.mean(lab == 2) for lab in labels])
    tally = d.Dissection(1, category_of, maps.size, share)
    tally.add_maps(maps)
    for m, lab in zip(maps, labels):
        tally.add_image(m.astype(np.float32), {0: [lab]})
    iou = tally.iou()
    assert iou[0, 2] == 1.0 and iou[0, 1] == 0.0


def test_upsample_puts_a_unit_at_the_centre_of_its_field():
    """Unit (i, j) of a stride-4 map with 8-px fields starting at -2: its centre is pixel
    -2 + 4 i + 3.5; a one-hot map peaks there (between the two middle pixels of the field)."""
    amap = np.zeros((5, 5), np.float32)
    amap[2, 3] = 1.0
    up = d.upsample(amap, (20, 20), (-2, -2), (8, 8), 4)
    y, x = np.unravel_index(np.argmax(up), up.shape)
    assert (y, x) in {(9, 13), (10, 13), (9, 14), (10, 14)}
    assert up[9, 13] == pytest.approx(up[10, 14]) == pytest.approx(0.875 * 0.875)


def test_colour_concepts_name_every_pixel_as_the_colour_model_does():
    """Colour-concept ids equal the colour model's name of each pixel, one by one; a red disc on
    grey gives the `red` concept exactly on the disc."""
    from neuronindex.science import colornames
    from neuronindex.science.concepts import COLOUR_CONCEPTS, colour_labels

    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    labels = colour_labels(pixels)
    for y in range(6):
        for x in range(7):
            assert COLOUR_CONCEPTS[labels[y, x] - 1] == colornames.name(pixels[y, x] / 255.0)
    img = np.full((16, 16, 3), 128, np.uint8)
    yy, xx = np.mgrid[:16, :16]
    disc = (yy - 8) ** 2 + (xx - 8) ** 2 <= 16
    img[disc] = (220, 30, 35)
    labels = colour_labels(img)
    red = COLOUR_CONCEPTS.index("red") + 1
    np.testing.assert_array_equal(labels == red, disc)
    assert set(np.unique(labels[~disc])) == {COLOUR_CONCEPTS.index("grey") + 1}


@pytest.fixture(scope="module")
def dissected(hierarchy_index, tmp_path_factory):
    """The tiny CNN over red, green and blue squares, dissected with colour concepts (a copy)."""
    import shutil

    from neuronindex.jobs.dissect import dissect

    index = tmp_path_factory.mktemp("dissect") / "index"
    shutil.copytree(hierarchy_index, index)
    return index, dissect(index, "colour", progress=False)


def test_stored_ious_equal_a_brute_force_dissection(dissected):
    """Every stored IoU equals the definition computed here from plain forwards: each unit's maps
    over all images, its stored threshold (checked against the exact top-0.5% quantile), masks
    upsampled by the receptive field, IoU with each colour's pixels."""
    import torch

    import neuronindex
    from neuronindex.science import colornames
    from neuronindex.science.concepts import colour_labels

    index, report = dissected
    assert [r["layer"] for r in report] == ["conv1", "conv2"]
    with neuronindex.open(index) as idx:
        images = [r["path"] for r in idx.query("SELECT path FROM images ORDER BY id").rows()]
        pre = idx.query("SELECT preprocessing FROM models").rows()[0]["preprocessing"]
        seen = np.stack([idx.seen(p, "", pre) for p in images])
        for layer in ("conv1", "conv2"):
            lay = idx.layer_rows("tiny_cnn", layer)[0]
            net = idx.network("tiny_cnn", layer)
            maps = net.extractor(torch.from_numpy(seen))[lay["node"]].float().numpy()
            stored = idx.query("SELECT n.channel, c.name, u.iou, u.threshold FROM unit_concepts u JOIN neurons n ON "
                               "n.id = u.neuron_id JOIN concepts c ON c.id = u.concept_id WHERE n.layer_id = ?",
                               [lay["id"]]).rows()
            assert stored
            geo = idx.query("SELECT channel, rf_y0, rf_x0, rf_h, rf_w FROM neurons WHERE layer_id = ? AND kind = 'channel'",
                            [lay["id"]]).rows()
            # each unit's stored top concept images: the 4 highest spatial maxima, ties to the earlier image
            tops = idx.query("SELECT n.channel, i.path, i.activation FROM dissection_images i JOIN neurons n ON "
                             "n.id = i.neuron_id WHERE n.layer_id = ? ORDER BY n.channel, i.rank", [lay["id"]]).rows()
            peaks = maps.max(axis=(2, 3))
            for ch in range(maps.shape[1]):
                order = sorted(range(len(images)), key=lambda b: (-peaks[b, ch], b))[:4]
                got = [r for r in tops if r["channel"] == ch]
                assert [r["path"] for r in got] == [images[b] for b in order]
                assert [r["activation"] for r in got] == pytest.approx([float(peaks[b, ch]) for b in order])
            for r in stored:
                ch, T = r["channel"], r["threshold"]
                v = np.sort(maps[:, ch].ravel())[::-1]
                exact = v[int(np.ceil(0.005 * v.size)) - 1]
                assert T <= exact and exact - T < abs(exact) / 64 + 1e-12
                g = geo[ch]
                inter = union = 0
                for img, m in zip(seen, maps[:, ch]):
                    up = d.upsample(m, img.shape[:2], (g["rf_y0"], g["rf_x0"]), (g["rf_h"], g["rf_w"]), lay["rf_stride"])
                    on = up >= T
                    lab = colour_labels(img) == colornames.TERMS.index(r["name"]) + 1
                    inter += np.sum(on & lab)
                    union += np.sum(on | lab)
                assert r["iou"] == pytest.approx(inter / union, abs=1e-12), (layer, ch, r["name"])


def test_dissection_is_shown_by_the_cli_api_and_http(dissected, cli_runner):
    """The first layer's red, green and blue detectors are labelled with their colour above the
    IoU threshold; the CLI prints the per-layer counts; the API and HTTP give a unit's concepts."""
    from fastapi.testclient import TestClient

    import neuronindex
    from neuronindex.service.app import create_app
    from neuronindex_cli.main import cli

    index, report = dissected
    with neuronindex.open(index) as idx:
        named = {}
        for r in idx.search("conv1 limit:100").rows():
            c = idx.neuron(r["key"]).concepts().rows()
            if c and c[0]["label"]:
                named[r["key"]] = (c[0]["concept"], r["color_name"])
        assert named and {n for n, _ in named.values()} <= {"red", "green", "blue", "grey", "black", "white",
                                                            "brown", "purple", "pink", "orange", "yellow"}
        # where a unit is colour selective and labelled, the label is its colour name
        agree = [k for k, (concept, colour) in named.items() if colour and concept == colour]
        assert agree
        summary = idx.dissections().rows()
        assert [s["layer"] for s in summary] == ["conv1", "conv2"] and all(s["units"] for s in summary)
        assert sum(s["interpretable"] for s in summary) == sum(r["interpretable"] for r in report)
    key = next(iter(named))
    body = TestClient(create_app(index)).get(f"/api/neurons/{key}/concepts").json()
    assert body["ok"] is True and body["rows"][0]["concept"] == named[key][0]
    out = cli_runner.invoke(cli, ["dissect", str(index), "--layers", "conv1", "-q"])
    assert out.exit_code == 0, out.output
    assert "conv1:" in out.output and "units interpretable" in out.output
    bad = cli_runner.invoke(cli, ["dissect", str(index), "--layers", "nope", "-q"])
    assert bad.exit_code != 0 and "nope" in bad.output and "Traceback" not in bad.output


def _broden_from_plain(plain, broden):
    """The same annotations in the Broden layout: label numbers shifted past 255 (so masks need
    R + 256 G), the scene as image-level numbers in index.csv, a label listed under two
    categories (counted in its main one)."""
    import csv
    import shutil

    from PIL import Image

    with open(plain / "labels.csv") as f:
        labels = list(csv.DictReader(f))
    shift = 300
    broden.mkdir(parents=True)
    with open(broden / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for r in labels:
            cat = f"{r['category']}(40);other(2)" if r["name"] == "disc" else f"{r['category']}(9)"
            w.writerow([int(r["id"]) + shift, r["name"], cat, 1, 1.0, ""])
    rows = []
    for img in sorted((plain / "images").rglob("*.png")):
        rel = img.relative_to(plain / "images")
        (broden / "images" / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(img, broden / "images" / rel)
        row = {"image": str(rel), "split": "train", "ih": 32, "iw": 32, "sh": 32, "sw": 32, "shape": "", "colour": "",
               "scene": ""}
        for category in ("shape", "colour"):
            ids = np.asarray(Image.open(plain / "masks" / category / rel)).astype(np.int64)
            number = np.where(ids > 0, ids + shift, 0)
            rgb = np.stack([number % 256, number // 256, np.zeros_like(number)], -1).astype(np.uint8)
            name = f"{rel.with_suffix('')}_{category}.png"
            Image.fromarray(rgb).save(broden / "images" / name)
            row[category] = name
        scene = np.asarray(Image.open(plain / "masks" / "scene" / rel)).max()
        row["scene"] = str(int(scene) + shift)
        rows.append(row)
    with open(broden / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_broden_and_plain_layouts_give_the_same_dissection(hierarchy_index, tmp_path):
    """A Broden-format set built from the demo's masks (plus an image-level scene category)
    dissects exactly as the same annotations in the plain layout (the scene there as whole-image
    masks): same concepts, same IoU for every unit."""
    import shutil

    from PIL import Image

    import neuronindex
    from neuronindex.demo import CLASSES, write_concepts
    from neuronindex.jobs.dissect import dissect

    plain = write_concepts(tmp_path / "plain", 4, 11)
    scenes = list(dict.fromkeys(CLASSES.values()))
    with open(plain / "labels.csv", "a") as f:
        f.writelines(f"{100 + i},{name},scene\n" for i, name in enumerate(scenes))
    for img in (plain / "images").rglob("*.png"):
        rel = img.relative_to(plain / "images")
        (plain / "masks" / "scene" / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32), 100 + scenes.index(CLASSES[rel.parts[0]]), np.uint8)).save(
            plain / "masks" / "scene" / rel)
    _broden_from_plain(plain, (tmp_path / "broden"))
    results = {}
    for name, source in (("plain", plain), ("broden", tmp_path / "broden")):
        index = tmp_path / f"index-{name}"
        shutil.copytree(hierarchy_index, index)
        report = dissect(index, str(source), progress=False)
        assert all(r["skipped"] == 0 for r in report)
        with neuronindex.open(index) as idx:
            results[name] = {(r["key"], r["name"], r["category"]): r["iou"] for r in idx.query(
                "SELECT n.key, c.name, c.category, u.iou FROM unit_concepts u JOIN neurons n ON n.id = u.neuron_id "
                "JOIN concepts c ON c.id = u.concept_id").rows()}
    assert results["plain"] and results["plain"].keys() == results["broden"].keys()
    for k, v in results["plain"].items():
        assert results["broden"][k] == pytest.approx(v, abs=1e-12), k
    assert {c for _, _, c in results["plain"]} == {"shape", "colour", "scene"}
    # the same set named by a relative path is the same set: dissecting again replaces, never doubles
    index = tmp_path / "index-plain"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        dissect(index, "plain", progress=False)
    with neuronindex.open(index) as idx:
        rows = idx.dissections().rows()
        assert len(rows) == len({r["layer"] for r in rows}) and {r["source"] for r in rows} == {str(plain.resolve())}


def test_masks_follow_the_models_geometry(tmp_path):
    """A mask at half the image's resolution, seen through a resize-then-centre-crop: label ids
    survive (nearest neighbour) and land where the image's pixels land."""
    from PIL import Image

    from neuronindex.conceptsets import open_concepts
    from neuronindex.nets.models import Preprocessing

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks" / "thing").mkdir(parents=True)
    (root / "labels.csv").write_text("id,name,category\n7,box,thing\n")
    Image.new("RGB", (40, 20)).save(root / "images" / "a.jpg")
    mask = np.zeros((10, 20), np.uint8)
    mask[:, 10:] = 7  # the right half of the image
    Image.fromarray(mask).save(root / "masks" / "thing" / "a.png")
    cs = open_concepts(root)
    assert cs.names == ["box"] and cs.categories == ["thing"]
    pre = Preprocessing(input_size=(16, 16), geometry="resize-crop", resize=16)  # 40x20 -> 32x16 -> crop 16x16
    (lab,) = cs.labels(cs.images[0], (40, 20), pre.geometric, (8, 8))[0]
    expected = np.zeros((8, 8), np.int64)
    expected[:, 4:] = 1  # the crop's x 8..24 of 32: its right half is the image's right half
    np.testing.assert_array_equal(lab, expected)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="not a concept set"):
        open_concepts(tmp_path / "empty")


def test_search_finds_units_by_concept(dissected, tmp_path):
    """`concept:`, `category:` and `iou` in the search language, against the stored rows read
    with plain SQL: a concept matches the units it labels (rank 1 above the dissection's IoU
    threshold), ranked by IoU; with an `iou` comparison, any stored concept at that IoU; every
    result of a dissected index carries its concept; the CSV export has the column."""
    import csv

    import neuronindex
    from neuronindex.errors import QueryError

    index, _ = dissected
    with neuronindex.open(index) as idx:
        stored = idx.query("SELECT n.key, c.name, c.category, u.iou, u.rank, d.iou_threshold FROM unit_concepts u "
                           "JOIN neurons n ON n.id = u.neuron_id JOIN concepts c ON c.id = u.concept_id "
                           "JOIN dissections d ON d.id = u.dissection_id").rows()
        labels = {r["key"]: r for r in stored if r["rank"] == 1 and r["iou"] > r["iou_threshold"]}
        name = max({r["name"] for r in labels.values()}, key=lambda n: sum(r["name"] == n for r in labels.values()))
        found = idx.search(f"concept:{name} limit:500").rows()
        expected = sorted((r for r in labels.values() if r["name"] == name), key=lambda r: -r["iou"])
        assert [r["key"] for r in found] == [r["key"] for r in expected]
        assert all(r["concept"] == name and r["iou"] == pytest.approx(e["iou"]) for r, e in zip(found, expected))
        loose = {r["key"] for r in idx.search(f"concept:{name} iou>0.01 limit:500").rows()}
        assert loose == {r["key"] for r in stored if r["name"] == name and r["iou"] > 0.01} and loose >= set(
            r["key"] for r in expected)
        assert {r["key"] for r in idx.search("category:colour limit:500").rows()} == set(labels)
        best = {r["key"] for r in idx.search("iou>=0.05 limit:500").rows()}
        assert best == {r["key"] for r in stored if r["rank"] == 1 and r["iou"] >= 0.05}
        plain = idx.search("conv1 limit:500").rows()
        assert {r["key"]: r["concept"] for r in plain if r["concept"]} == {
            k: r["name"] for k, r in labels.items() if "/conv1/" in k}
        with pytest.raises(QueryError, match="unknown concept 'wheel'"):
            idx.search("concept:wheel")
        idx.export(f"concept:{name}", "csv", tmp_path / "out.csv")
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == [r["key"] for r in expected] and rows[0]["concept"] == name


def test_concept_words_need_a_dissection(hierarchy_index):
    import neuronindex
    from neuronindex.errors import QueryError

    with neuronindex.open(hierarchy_index) as idx:
        with pytest.raises(QueryError, match="no dissection yet"):
            idx.search("category:shape")
        assert "concept" not in idx.search("conv1 limit:1").rows()[0]


def test_concept_overlay_outlines_the_thresholded_map_over_the_mask(dissected):
    """The picture of a unit's best concept, checked against a brute-force redraw of its first
    image: yellow exactly on the boundary of {upsampled map >= T}, the concept's pixels tinted."""
    import torch

    import neuronindex
    from neuronindex.science.concepts import COLOUR_CONCEPTS, colour_labels

    index, _ = dissected
    with neuronindex.open(index) as idx:
        best = idx.query("SELECT n.key, n.channel, n.layer_id, c.name, u.threshold FROM unit_concepts u JOIN neurons n "
                         "ON n.id = u.neuron_id JOIN concepts c ON c.id = u.concept_id WHERE u.rank = 1 "
                         "ORDER BY u.iou DESC LIMIT 1").rows()[0]
        strip = np.asarray(idx.neuron(best["key"]).concept_overlay(n=1))
        first = idx.query("SELECT i.path FROM dissection_images i JOIN neurons n ON n.id = i.neuron_id WHERE n.key = ? "
                          "AND i.rank = 1", [best["key"]]).rows()[0]["path"]
        lay = idx.query("SELECT name, node, rf_stride FROM layers WHERE id = ?", [best["layer_id"]]).rows()[0]
        g = idx.query("SELECT rf_y0, rf_x0, rf_h, rf_w FROM neurons WHERE key = ?", [best["key"]]).rows()[0]
        pre = idx.query("SELECT preprocessing FROM models").rows()[0]["preprocessing"]
        seen = idx.seen(first, "", pre)
        net = idx.network("tiny_cnn", lay["name"])
        amap = net.extractor(torch.from_numpy(seen.copy())[None])[lay["node"]][0, best["channel"]].float().numpy()
    h, w = seen.shape[:2]
    on = d.upsample(amap, (h, w), (g["rf_y0"], g["rf_x0"]), (g["rf_h"], g["rf_w"]), lay["rf_stride"]) >= best["threshold"]
    k = strip.shape[0] // h
    on = on.repeat(k, 0).repeat(k, 1)
    lab = (colour_labels(seen) == COLOUR_CONCEPTS.index(best["name"]) + 1).repeat(k, 0).repeat(k, 1)
    yellow = (strip == (255, 220, 0)).all(-1)
    inner = on.copy()
    for shift in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        inner &= np.roll(on, shift, (0, 1))
    assert on.any() and yellow[on & ~inner].all() and not yellow[~on].any()
    big = np.asarray(seen, np.float32).repeat(k, 0).repeat(k, 1)
    tinted = np.round(0.55 * big + 0.45 * np.array([0, 200, 255], np.float32))
    plain = lab & ~yellow
    assert plain.any()
    np.testing.assert_allclose(strip[plain], tinted[plain], atol=1)
    np.testing.assert_array_equal(strip[~lab & ~yellow], big[~lab & ~yellow])


def test_pages_and_report_show_the_dissection(dissected):
    """The neuron page lists its concepts and draws the overlay; the model page and the report
    show the unique detectors per category by layer, the numbers read from the stored rows."""
    from fastapi.testclient import TestClient

    import neuronindex
    from neuronindex import report
    from neuronindex.service.app import create_app

    index, _ = dissected
    with neuronindex.open(index) as idx:
        key = idx.query("SELECT n.key FROM unit_concepts u JOIN neurons n ON n.id = u.neuron_id WHERE u.rank = 1 "
                        "ORDER BY u.iou DESC LIMIT 1").rows()[0]["key"]
        rows = idx.query("SELECT l.name AS layer, c.name, c.category FROM unit_concepts u JOIN dissections d ON "
                         "d.id = u.dissection_id JOIN layers l ON l.id = d.layer_id JOIN concepts c ON "
                         "c.id = u.concept_id WHERE u.rank = 1 AND u.iou > d.iou_threshold").rows()
        figure = report.figure_detectors(idx, "tiny_cnn")["colour"]
        assert figure["layers"] == ["conv1", "conv2"]
        assert figure["categories"]["colour"] == [len({r["name"] for r in rows if r["layer"] == layer})
                                                  for layer in ("conv1", "conv2")]
        assert "dissection_detectors" in report.figure_names(idx, "tiny_cnn")
    client = TestClient(create_app(index))
    page = client.get(f"/neuron/{key}").text
    assert "concepts (Network Dissection)" in page and f"/api/neurons/{key}/concepts.png" in page
    png = client.get(f"/api/neurons/{key}/concepts.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    missing = client.get(f"/api/neurons/{key}/concepts.png?concept=wheel")
    assert missing.status_code == 404 and "not among the best concepts" in missing.json()["error"]
    model = client.get("/model/tiny_cnn").text
    assert "concepts by depth" in model and "interpretable units" in model
    assert "Network Dissection" in client.get("/layer/tiny_cnn/conv1").text


def test_ingest_dissects_when_asked(cli_runner, image_folder, tmp_path):
    """`neuronindex ingest --dissect colour` ends with a dissection of every stored layer; a bad
    concept folder is a one-line error before anything is ingested."""
    import neuronindex
    from neuronindex_cli.main import cli

    base = ["ingest", "--model", "python:tinymodels:tiny_cnn", "--images", str(image_folder), "--layers", "conv1,conv2",
            "--input-size", "16", "16", "--resize-policy", "resize", "-q"]
    bad = cli_runner.invoke(cli, base + ["--index", str(tmp_path / "bad"), "--dissect", str(tmp_path / "nowhere")])
    assert bad.exit_code != 0 and "not a concept set" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "bad" / "index.duckdb").exists()
    out = cli_runner.invoke(cli, base + ["--index", str(tmp_path / "idx"), "--dissect", "colour"])
    assert out.exit_code == 0, out.output
    assert "conv1:" in out.output and "conv2:" in out.output and "units interpretable" in out.output
    with neuronindex.open(tmp_path / "idx") as idx:
        assert [r["layer"] for r in idx.dissections().rows()] == ["conv1", "conv2"]


def test_a_planted_filter_in_a_network_gets_iou_one(tmp_path):
    """End to end with hand-set filters: a 1x1 conv whose channel 0 is R - (G + B) / 2 and
    channel 1 is G - (R + B) / 2 (tinymodels.colour_classifier), over black images holding one
    pure red and one pure green square, dissected with the squares' exact masks (plain layout):
    channel 0's map is 1 exactly on the red square and at most 0 elsewhere, so at its top 0.5% it
    is the red square's mask, IoU 1; channel 1 likewise with the green square."""
    from PIL import Image

    import neuronindex
    from neuronindex.jobs.dissect import dissect
    from neuronindex.jobs.ingest import IngestParams, ingest
    from neuronindex.nets.models import Preprocessing

    rng = np.random.default_rng(7)
    root = tmp_path / "squares"
    for sub in ("images", "masks/shape"):
        (root / sub).mkdir(parents=True)
    (root / "labels.csv").write_text("id,name,category\n1,red square,shape\n2,green square,shape\n")
    for i in range(12):
        img, mask = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8)
        for label, colour in ((1, (255, 0, 0)), (2, (0, 255, 0))):
            while True:
                s = int(rng.integers(3, 7))
                y, x = (int(v) for v in rng.integers(0, 16 - s, 2))
                if not mask[y:y + s, x:x + s].any():
                    break
            img[y:y + s, x:x + s], mask[y:y + s, x:x + s] = colour, label
        Image.fromarray(img).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / "shape" / f"{i:02d}.png")
    index = tmp_path / "index"
    ingest("python:tinymodels:colour_classifier", str(root / "images"), "conv", index, name="planted",
           preprocessing=Preprocessing(input_size=(16, 16), geometry="resize", resize=None, mean=(0, 0, 0),
                                       std=(1, 1, 1)), params=IngestParams(top_k=5, batch_size=8), progress=False)
    dissect(index, str(root), progress=False)
    with neuronindex.open(index) as idx:
        best = {r["channel"]: (r["name"], r["iou"]) for r in idx.query(
            "SELECT n.channel, c.name, u.iou FROM unit_concepts u JOIN neurons n ON n.id = u.neuron_id JOIN concepts c "
            "ON c.id = u.concept_id WHERE u.rank = 1").rows()}
    assert best[0] == ("red square", 1.0) and best[1] == ("green square", 1.0)
