"""Selectivity indexes on hand-built inputs, and on the tiny model end to end."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest

from neuronindex import selectivity as sel


def uniform(rgb, size=5):
    nf = np.tile(np.array(rgb, dtype=np.float32), (size, size, 1))
    return nf, np.ones((size, size), bool), np.full((size, size), 10.0, np.float32)


def test_red_patch_is_colour_selective_and_red():
    c = sel.color_selectivity(*uniform((220, 30, 30)))
    assert c.alpha >= 0.8
    assert c.color_name == "red" and c.hue_name == "red"
    assert c.hue < 60 or c.hue > 330  # red lies near 0 deg (towards +O1, slightly +O2)


def test_luminance_edge_is_not_colour_selective():
    nf = np.zeros((6, 6, 3), np.float32)
    nf[:, 3:] = 230
    nf[:, :3] = 20
    c = sel.color_selectivity(nf, np.ones((6, 6), bool), np.full((6, 6), 5.0, np.float32))
    assert c.alpha <= 0.2
    assert c.color_name is None and set(c.shares) <= {"black", "white", "grey"}


def test_inconsistent_pixels_weigh_less():
    nf, valid, std = uniform((128, 128, 128), 6)
    nf[0, 0] = (250, 0, 0)  # one red pixel...
    loud = sel.color_selectivity(nf, valid, std)
    std[0, 0] = 1000.0  # ...that the crops disagree on
    quiet = sel.color_selectivity(nf, valid, std)
    assert quiet.shares["red"] < loud.shares["red"] / 10


@pytest.mark.parametrize("name, rgb", [
    ("black", (10, 10, 10)), ("white", (250, 250, 250)), ("grey", (128, 128, 128)), ("red", (230, 20, 25)),
    ("orange", (255, 150, 10)), ("yellow", (250, 240, 30)), ("green", (20, 150, 30)), ("blue", (20, 30, 230)),
    ("purple", (130, 20, 140)), ("pink", (255, 180, 200)), ("brown", (150, 50, 40)),
])
def test_swatches_of_all_eleven_names(name, rgb):
    assert sel.COLOR_NAMES[int(sel.color_name_of(np.array(rgb) / 255.0))] == name
    c = sel.color_selectivity(*uniform(rgb))
    assert c.shares == {name: pytest.approx(1.0)}


def test_opponent_round_trip():
    rgb = np.random.default_rng(0).random((10, 3))
    np.testing.assert_allclose(sel.from_opponent(sel.to_opponent(rgb)), rgb, atol=1e-12)


def test_one_class_gives_gamma_one():
    k = sel.class_selectivity(["dog"] * 10, np.linspace(1, 0.7, 10))
    assert k.gamma == 1.0 and k.m == 1 and k.frequencies == [("dog", pytest.approx(1.0))]


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


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_loaded):
    """Coloured squares, plus white ones whose borders are the strongest achromatic edges."""
    from conftest import write_folder
    from neuronindex.ingest import IngestParams, ingest

    path = tmp_path_factory.mktemp("sel")
    folder = write_folder(path / "images", per_class=8, kinds=("red", "green", "blue", "white"))
    ingest(tiny_loaded, str(folder), "conv1,conv2", path / "index", params=IngestParams(top_k=8), progress=False)
    path = path / "index"
    return duckdb.connect(str(path / "index.duckdb"), read_only=True)


def test_red_channel_end_to_end(index):
    alpha, name, hue_name, cri, gamma, top = index.execute(
        "SELECT color_index, color_name, hue_name, color_response, class_index, c.name FROM neurons n "
        "JOIN classes c ON c.id = n.top_class_id WHERE key = 'tiny_cnn/conv1/0'").fetchone()
    assert alpha >= 0.8 and name == "red" and hue_name == "red"
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


def test_faint_tint_of_a_uniform_nf_is_not_colour_selective():
    assert sel.color_selectivity(*uniform((240, 236, 244))).alpha < 0.3
    assert sel.color_selectivity(*uniform((128, 128, 128))).alpha < 0.01
