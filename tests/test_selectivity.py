"""Selectivity indexes on hand-built inputs, and on the tiny model end to end."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest

from neuronindex.science import selectivity as sel


def uniform(rgb, size=5):
    nf = np.tile(np.array(rgb, dtype=np.float32), (size, size, 1))
    return nf, np.ones((size, size), bool), np.full((size, size), 10.0, np.float32)


def blob(rgb, background=(128, 128, 128), size=8):
    """A colour blob in the middle of a background: what a colour-selective NF looks like."""
    nf, valid, std = uniform(background, size)
    nf[2:6, 2:6] = rgb
    return nf, valid, std


def angle_to_intensity(a, b) -> float:
    """alpha of an NF of two colours (RGB 0-255), by hand: the principal component of two
    clusters is their difference, and the opponent transform is a rotation, so the angle to the
    intensity axis is the angle between (a - b) and (1, 1, 1) in RGB."""
    d = np.array(a, float) - np.array(b, float)
    return float(np.degrees(np.arccos(abs(d.sum()) / (np.linalg.norm(d) * np.sqrt(3)))) / 90)


def test_alpha_of_a_two_colour_nf_by_hand():
    # red on black: (1, 0, 0) against (1, 1, 1) -> arccos(1 / sqrt 3) = 54.7356 deg
    c = sel.color_selectivity(*blob((255, 0, 0), (0, 0, 0)))
    assert c.alpha == pytest.approx(54.735610317 / 90, abs=1e-6)
    for a, b in [((220, 30, 30), (128, 128, 128)), ((20, 40, 220), (90, 80, 60)), ((250, 250, 40), (30, 30, 30))]:
        assert sel.color_selectivity(*blob(a, b)).alpha == pytest.approx(angle_to_intensity(a, b), abs=1e-6)


def test_alpha_centres_on_the_weighted_mean_colour():
    # a brown tint everywhere and a luminance edge: the tint is the mean, not selectivity
    nf, valid, std = uniform((140, 100, 60), 6)
    nf[:, 3:] = (180, 140, 100)
    c = sel.color_selectivity(nf, valid, std)
    assert c.alpha == pytest.approx(angle_to_intensity((180, 140, 100), (140, 100, 60)), abs=1e-6)
    assert c.alpha == pytest.approx(0.0, abs=1e-6)  # the difference (40, 40, 40) is pure intensity


def test_the_one_over_std_weights_decide_the_component():
    """Two achromatic pixels at grey +- 51 (O3 deviation sqrt(3) 0.2 = 0.346) and two chromatic ones at
    grey +- (51, -51, 0) (O1 deviation sqrt(2) 0.2 = 0.283), all with the mean (0, 0, O3(grey)) by
    symmetry: the covariance is diagonal, sum w^2 d^2 per axis. Equal std: O3 wins (alpha 0);
    chromatic pixels twice as consistent (std 10 vs 20): 0.1 * 0.283 > 0.05 * 0.346, O1 wins (alpha 1)."""
    nf = np.array([[[179, 179, 179], [77, 77, 77]], [[179, 77, 128], [77, 179, 128]]], np.float32)
    valid = np.ones((2, 2), bool)
    assert sel.color_selectivity(nf, valid, np.full((2, 2), 10.0, np.float32)).alpha == pytest.approx(0.0, abs=1e-9)
    std = np.array([[20.0, 20.0], [10.0, 10.0]], np.float32)
    assert sel.color_selectivity(nf, valid, std).alpha == pytest.approx(1.0, abs=1e-9)
    # below the floor of 1 grey level the weights no longer grow
    floor = np.array([[0.5, 0.5], [0.25, 0.25]], np.float32)
    assert sel.color_selectivity(nf, valid, floor).alpha == pytest.approx(0.0, abs=1e-9)


def test_delchambre_weighted_pca_by_formula():
    rng = np.random.default_rng(3)
    x, w = rng.random((50, 3)), rng.random(50) + 0.1
    mean, values, vectors = sel.weighted_pca(x, w)
    np.testing.assert_allclose(mean, (w[:, None] * x).sum(0) / w.sum())
    wx = (x - mean) * w[:, None]
    cov = np.einsum("pi,pj->ij", wx, wx) / np.einsum("p,p->", w, w)  # (W.X)(W.X)^T / (W W^T)
    np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, cov, atol=1e-12)


@pytest.mark.parametrize("rgb, hue, name", [((255, 0, 0), 30.0, "red"), ((0, 0, 255), 270.0, "blue"),
                                             ((0, 255, 0), 150.0, "green")])
def test_hue_of_a_known_direction(rgb, hue, name):
    # (1,0,0) - grey = (0.5,-0.5,-0.5): O1 = 1/sqrt2, O2 = 1/sqrt6 -> atan2 = 30 deg; blue: O1 = 0, O2 < 0
    c = sel.color_selectivity(*blob(rgb, (128, 128, 128)))
    assert c.hue == pytest.approx(hue, abs=0.5)
    assert c.hue_name == name == c.color_name


def test_flat_nf_has_no_principal_component_but_a_mean_chroma():
    flat = sel.color_selectivity(*uniform((30, 80, 220)))
    assert flat.alpha is None and flat.hue is None
    assert flat.chroma == pytest.approx(np.hypot(*sel.to_opponent(np.array([30, 80, 220]) / 255.0)[:2]), rel=1e-6)
    assert sel.color_selectivity(*uniform((240, 236, 244))).chroma == pytest.approx(np.hypot(4 / np.sqrt(2), 12 / np.sqrt(6)) / 255)
    assert flat.color_name == "blue"


def test_luminance_edge_is_not_colour_selective():
    nf = np.zeros((6, 6, 3), np.float32)
    nf[:, 3:] = 230
    nf[:, :3] = 20
    c = sel.color_selectivity(nf, np.ones((6, 6), bool), np.full((6, 6), 5.0, np.float32))
    assert c.alpha == pytest.approx(0.0, abs=1e-9)
    assert max(c.shares, key=c.shares.get) in ("black", "white", "grey")


def test_inconsistent_pixels_weigh_less():
    """A red and a blue pixel in a grey NF: equally consistent, both colours are named; when the
    crops disagree on the blue one (std 1000 instead of 10), its 1/std weight shrinks and red wins."""
    nf, valid, std = uniform((128, 128, 128), 6)
    nf[0, 0] = (250, 0, 0)
    nf[5, 5] = (0, 0, 250)
    loud = sel.color_selectivity(nf, valid, std)
    assert 1 / 3 < loud.shares["red"] / loud.shares["blue"] < 3
    std[5, 5] = 1000.0
    quiet = sel.color_selectivity(nf, valid, std)
    assert quiet.color_name == "red" and quiet.shares["blue"] < quiet.shares["red"] / 10


def test_a_lone_pixel_names_the_nf_by_its_share_of_the_component():
    """One red pixel among 35 grey ones: the first component runs from grey to red whatever the
    weights (two colours), and each pixel's naming weight is (w t)^2 with t its projection: by hand
    t_red = 35 w_g d / W, t_grey = w_r d / W, so the red pixel carries 35^2 / (35^2 + 35) = 35/36."""
    from neuronindex.science.colornames import TERMS, probabilities

    nf, valid, std = uniform((128, 128, 128), 6)
    nf[0, 0] = (250, 0, 0)
    c = sel.color_selectivity(nf, valid, std)
    p_red, p_grey = (float(probabilities(np.array(x) / 255)[TERMS.index("red")]) for x in ((250, 0, 0), (128, 128, 128)))
    assert c.shares["red"] == pytest.approx((35 * p_red + p_grey) / 36, rel=1e-6)
    assert c.alpha == pytest.approx(angle_to_intensity((250, 0, 0), (128, 128, 128)), abs=1e-6)


def test_a_ring_detector_is_named_after_its_ring_not_its_background():
    # a yellow ring every crop agrees on, inside a green background the crops disagree on
    nf, valid, std = uniform((40, 160, 60), 12)
    yy, xx = np.mgrid[:12, :12]
    ring = np.abs(np.hypot(yy - 5.5, xx - 5.5) - 3.5) < 1.0
    nf[ring] = (240, 220, 30)
    std[~ring] = 60.0
    std[ring] = 4.0
    c = sel.color_selectivity(nf, valid, std)
    assert ring.mean() < 0.4 and c.color_name == "yellow"


@pytest.mark.parametrize("name, rgb", [
    ("black", (10, 10, 10)), ("white", (250, 250, 250)), ("grey", (128, 128, 128)), ("red", (230, 20, 25)),
    ("orange", (255, 150, 10)), ("yellow", (250, 240, 30)), ("green", (20, 150, 30)), ("blue", (20, 30, 230)),
    ("purple", (130, 20, 140)), ("pink", (255, 180, 200)), ("brown", (120, 70, 30)),
    ("blue", (0, 170, 230)), ("blue", (40, 120, 200)),  # the sky blues the keyword prototypes called grey
])
def test_swatches_of_all_eleven_names(name, rgb):
    from neuronindex.science import colornames

    assert colornames.name(np.array(rgb) / 255.0) == name
    shares = sel.color_selectivity(*uniform(rgb)).shares
    assert max(shares, key=shares.get) == name
    assert sum(shares.values()) == pytest.approx(1.0)


def test_colour_naming_model_agrees_with_held_out_survey_names():
    from neuronindex.science import colornames

    rgb, term, names = colornames.survey_samples()
    assert len(term) == 569 and set(term) == set(range(11))
    assert names[list(term).index(colornames.TERMS.index("blue"))].endswith("blue")
    assert colornames.validate() >= 0.90


@pytest.mark.parametrize("hue", range(0, 360, 15))
def test_hue_names_agree_with_colour_names(hue):
    """The most saturated colour of a hue is named alike as a hue and as a colour blob."""
    t = np.radians(hue)
    direction = sel.from_opponent(np.array([np.cos(t), np.sin(t), 0.0]))
    steps = np.where(direction > 0, 0.5 / np.where(direction > 0, direction, 1),
                     np.where(direction < 0, -0.5 / np.where(direction < 0, direction, 1), np.inf))
    rgb = np.clip(0.5 + steps.min() * direction, 0, 1) * 255
    c = sel.color_selectivity(*blob(rgb, (128, 128, 128)))
    assert c.hue == pytest.approx(hue, abs=1.0) or abs(c.hue - hue) > 359
    assert c.hue_name == c.color_name


def test_opponent_round_trip():
    rgb = np.random.default_rng(0).random((10, 3))
    np.testing.assert_allclose(sel.from_opponent(sel.to_opponent(rgb)), rgb, atol=1e-12)


def test_one_class_gives_gamma_one():
    k = sel.class_selectivity(["dog"] * 10, np.linspace(1, 0.7, 10))
    assert k.gamma == 1.0 and k.m == 1 and k.frequencies == [("dog", pytest.approx(1.0))]


def test_zero_weight_classes_never_count_toward_m():
    # 12 images of one class above the threshold, 88 of 28 other classes that do not fire (w = 0)
    labels = ["tench"] * 12 + [f"c{i % 28}" for i in range(88)]
    w = np.concatenate([np.linspace(1, 0.7, 12), np.zeros(88)])
    k = sel.class_selectivity(labels, w, threshold=1.0)
    assert k.m == 1 and k.n == 100 and k.gamma == 1.0 and [c for c, _ in k.frequencies] == ["tench"]


def test_th_one_is_not_decided_by_round_off():
    # ten weights of 0.1: added one by one, as a cumulative threshold test would, they fall short
    # of 1 by float round-off (IEEE doubles on every Python; the built-in sum() is compensated
    # from Python 3.12 on, so it is not the premise)
    total = 0.0
    for _ in range(10):
        total += 0.1
    assert total < 1.0
    k = sel.class_selectivity([f"c{i}" for i in range(10)] + ["c0"] * 90, np.r_[[0.1] * 10, np.zeros(90)])
    assert k.m == 10 and k.gamma == pytest.approx(90 / 99)


def test_dead_neurons_by_hand():
    act_max = np.array([0.0, 8e-14, 5.0, 2e-9, 3.0, -1.0, np.nan])
    act_std = np.array([0.0, 0.0, 1.0, 1e-10, 0.5, 0.0, np.nan])
    # never fires; constant; alive; negligible next to the layer's median a_max (1.5); alive; negative; unseen
    assert sel.dead_neurons(act_max, act_std).tolist() == [True, True, False, True, False, True, True]


def test_n_distinct_classes_give_gamma_zero():
    k = sel.class_selectivity([f"c{i}" for i in range(8)], np.linspace(1, 0.7, 8), threshold=1.0)
    assert k.gamma == 0.0 and k.m == 8


def test_worked_example_with_weights_and_threshold_0_9():
    # N = 5 images: cat 1.0 + 0.9, dog 0.8, bird 0.75 + 0.7; total 4.15
    labels = ["cat", "dog", "cat", "bird", "bird"]
    w = np.array([1.0, 0.8, 0.9, 0.75, 0.7])
    k = sel.class_selectivity(labels, w, threshold=0.9)
    f = dict(k.frequencies)
    assert f["cat"] == pytest.approx(1.9 / 4.15)
    assert f["bird"] == pytest.approx(1.45 / 4.15)
    assert f["dog"] == pytest.approx(0.8 / 4.15)
    # cat + bird = 0.807 < 0.9, all three = 1.0 -> M = 3, gamma = (5 - 3) / 4
    assert k.m == 3 and k.gamma == pytest.approx(0.5)
    k = sel.class_selectivity(labels, w, threshold=0.8)
    assert k.m == 2 and k.gamma == pytest.approx(0.75) and k.selected == 2


def test_hierarchy_roll_up():
    parents = {"husky": "dog", "beagle": "dog", "dog": "animal", "cat": "animal", "car": "vehicle"}

    def ancestors(name):
        out = []
        while name in parents:
            name = parents[name]
            out.append(name)
        return out
    k = sel.class_selectivity(["husky", "beagle", "husky", "cat", "car"], np.ones(5))
    up = sel.roll_up(k.frequencies, ancestors)
    assert up == {"dog": pytest.approx(0.6), "animal": pytest.approx(0.8), "vehicle": pytest.approx(0.2)}


def test_csi_by_hand():
    means = np.array([[4.0, 1.0, np.nan], [1.0, 1.0, 2.0], [1.0, 1.0, np.nan]])  # 3 classes x 3 neurons
    value, top = sel.csi(means)
    assert value[0] == pytest.approx((4 - 1) / (4 + 1))
    assert value[1] == pytest.approx(0.0)
    assert np.isnan(value[2])  # one class only
    assert top[0] == 0
    # a negative class mean (a pre-activation layer, a direction's centred map): the index is undefined
    value, _ = sel.csi(np.array([[4.0], [-1.0], [1.0]]))
    assert np.isnan(value[0])  # the formula would give (4 - 0) / (4 + 0) = 1.0 here, hiding the negative class


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_loaded):
    """Coloured squares, plus white ones whose borders are the strongest achromatic edges."""
    from conftest import write_folder
    from neuronindex.jobs.ingest import IngestParams, ingest

    path = tmp_path_factory.mktemp("sel")
    folder = write_folder(path / "images", per_class=8, kinds=("red", "green", "blue", "white"))
    ingest(tiny_loaded, str(folder), "conv1,conv2", path / "index", params=IngestParams(top_k=8), progress=False)
    path = path / "index"
    return duckdb.connect(str(path / "index.duckdb"), read_only=True)


def test_red_channel_end_to_end(index):
    alpha, chroma, name, cri, gamma, top = index.execute(
        "SELECT color_index, mean_chroma, color_name, color_response, class_index, c.name FROM neurons n "
        "JOIN classes c ON c.id = n.top_class_id WHERE key = 'tiny_cnn/conv1/0'").fetchone()
    # its 3x3 crops all lie inside red squares: a flat red NF, no principal component (alpha NULL)
    assert alpha is None and name == "red"
    assert chroma == pytest.approx(np.hypot(*sel.to_opponent(np.array([220, 30, 30]) / 255)[:2]), rel=0.02)
    assert cri > 0.9  # greyscale images barely drive it
    assert gamma == 1.0 and top == "red"  # its top images are all of the red class


def test_edge_channel_end_to_end(index):
    alpha, cri = index.execute("SELECT color_index, color_response FROM neurons WHERE key = 'tiny_cnn/conv1/1'").fetchone()
    assert alpha <= 0.2 and abs(cri) < 0.2


def test_side_tables_and_csi(index):
    shares = index.execute("SELECT n.key, sum(share) FROM neuron_colors c JOIN neurons n ON n.id = c.neuron_id "
                           "GROUP BY 1").fetchall()
    assert shares and all(s == pytest.approx(1.0) for _, s in shares)
    f = index.execute("SELECT sum(share) FILTER (WHERE is_leaf), bool_or(in_set) FROM neuron_classes c "
                      "JOIN neurons n ON n.id = c.neuron_id WHERE n.key = 'tiny_cnn/conv2/3'").fetchone()
    assert f[0] == pytest.approx(1.0) and f[1]
    csi, cls = index.execute("SELECT csi, c.name FROM neurons n JOIN classes c ON c.id = n.csi_class_id "
                             "WHERE key = 'tiny_cnn/conv1/0'").fetchone()
    assert csi > 0.3 and cls == "red"
    assert index.execute("SELECT count(*) FROM neurons WHERE dead AND color_index IS NOT NULL").fetchone()[0] == 0




def test_morcos_csi_from_spatial_means_equals_brute_force(tmp_path, image_folder, tiny_loaded):
    """`spatial_means` adds Morcos et al.'s CSI (class means of each map's spatial mean), computed
    here from the maps themselves; without it csi_mean is NULL and csi uses the spatial maximum."""
    import torch

    from neuronindex.data import open_source
    from neuronindex.nets.extract import Extractor
    from neuronindex.jobs.ingest import IngestParams, ingest

    ingest(tiny_loaded, str(image_folder), "conv1,conv2", tmp_path / "a",
           params=IngestParams(top_k=8, batch_size=5, spatial_means=True), progress=False)
    images = open_source(str(image_folder))
    extractor = Extractor(tiny_loaded, ["conv1", "conv2"])
    names = images.leaf_classes
    sums = {n: np.zeros((len(names), c)) for n, c in (("conv1", 4), ("conv2", 6))}
    counts = np.zeros(len(names))
    for r in images.images:
        x = torch.from_numpy(np.asarray(tiny_loaded.preprocessing.geometric(images.load(r)), dtype=np.uint8).copy())[None]
        maps = extractor(x)
        k = names.index(r.label)
        counts[k] += 1
        for n in sums:
            sums[n][k] += maps[n][0].double().mean(dim=(1, 2)).numpy()
    con = duckdb.connect(str(tmp_path / "a" / "index.duckdb"), read_only=True)
    for layer, s in sums.items():
        expected = sel.csi(s / counts[:, None])[0]
        got = [r[0] for r in con.execute("SELECT n.csi_mean FROM neurons n JOIN layers l ON l.id = n.layer_id "
                                          "WHERE l.name = ? ORDER BY n.channel", [layer]).fetchall()]
        dead = [r[0] for r in con.execute("SELECT dead FROM neurons n JOIN layers l ON l.id = n.layer_id "
                                           "WHERE l.name = ? ORDER BY n.channel", [layer]).fetchall()]
        for g, e, d in zip(got, expected, dead):
            # NULL for dead neurons, and where a class mean is negative (conv1 is the conv, before its ReLU)
            assert (g is None) if d or not np.isfinite(e) else g == pytest.approx(e, rel=1e-4, abs=1e-6), (layer, g, e)
    ingest(tiny_loaded, str(image_folder), "conv1", tmp_path / "b", params=IngestParams(top_k=8), progress=False)
    con = duckdb.connect(str(tmp_path / "b" / "index.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM neurons WHERE csi_mean IS NOT NULL").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM neurons WHERE csi IS NOT NULL").fetchone()[0] > 0


def opponent_hue(rgb) -> float:
    """Hue by hand: the angle of (O1, O2) = ((R-G)/sqrt2, (R+G-2B)/sqrt6) around the grey axis."""
    r, g, b = np.array(rgb, float) / 255
    return float(np.degrees(np.arctan2((r + g - 2 * b) / np.sqrt(6), (r - g) / np.sqrt(2))) % 360)


def test_a_red_blob_with_a_purple_corner_is_red():
    """The demo's red-disc NF: six red pixels and three purple ones at one corner. The purple pixels
    lie furthest from the mean, yet the NF is red to the eye: the name and the hue are the dominant
    end's (area x chroma), and red and purple (less than 90 degrees of hue apart) make no pair."""
    nf = np.tile(np.array([223, 27, 34], np.float32), (3, 3, 1))
    nf[0, :2] = nf[1, 0] = (155, 66, 132)
    c = sel.color_selectivity(nf, np.ones((3, 3), bool), np.full((3, 3), 10.0, np.float32))
    assert c.label == "red" and c.color_name == "red" and c.second is None
    assert c.hue == pytest.approx(opponent_hue((223, 27, 34)), abs=1e-6)


def test_an_opponent_nf_is_named_by_both_ends_with_the_dominant_hue():
    """Blue on two thirds, orange on one third: `blue/orange`, hue of the blue. Swap the areas and
    the order swaps."""
    blue, orange = (40, 70, 220), (245, 140, 20)
    nf = np.tile(np.array(blue, np.float32), (6, 6, 1))
    nf[:, 4:] = orange
    c = sel.color_selectivity(nf, np.ones((6, 6), bool), np.full((6, 6), 10.0, np.float32))
    assert (c.label, c.color_name, c.second) == ("blue/orange", "blue", "orange")
    assert c.hue == pytest.approx(opponent_hue(blue), abs=1e-6) and c.hue_name == "blue"
    nf[:, 2:] = orange
    c = sel.color_selectivity(nf, np.ones((6, 6), bool), np.full((6, 6), 10.0, np.float32))
    assert c.label == "orange/blue" and c.hue == pytest.approx(opponent_hue(orange), abs=1e-6)


def test_a_small_second_colour_does_not_make_a_pair():
    """One orange pixel in 36 blue ones: its salience is 1/35 of the blue's x its chroma ratio, far
    below color_pair; and a grey background is no colour at all."""
    nf = np.tile(np.array([40, 70, 220], np.float32), (6, 6, 1))
    nf[0, 0] = (245, 140, 20)
    c = sel.color_selectivity(nf, np.ones((6, 6), bool), np.full((6, 6), 10.0, np.float32))
    assert c.label == "blue"
    c = sel.color_selectivity(*blob((250, 240, 30), (128, 128, 128)))
    assert c.label == "yellow"


def test_no_label_below_the_colour_threshold():
    """A luminance edge with a faint tint: a dominant name is stored, none is shown."""
    nf = np.zeros((6, 6, 3), np.float32)
    nf[:, 3:] = (230, 200, 190)
    nf[:, :3] = (40, 20, 10)
    c = sel.color_selectivity(nf, np.ones((6, 6), bool), np.full((6, 6), 5.0, np.float32))
    assert c.alpha < sel.COLOR_THRESHOLD and c.color_name is not None and c.label is None
