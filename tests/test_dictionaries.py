"""Learned dictionaries (NMF as in CRAFT, sparse autoencoders) indexed as units: the position sample,
the fits on planted data, and end to end through ingest, directions learn, search and the pages."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch

from neuronindex.jobs.ingest import IngestParams, ingest, merge_states
from neuronindex.science.dictionaries import (
    DictionarySpec,
    PositionSample,
    baselines,
    fit_nmf,
    fit_sae,
    position_keys,
    r2_score,
)

PARTS = np.array([[1.0, 0.8, 0.0, 0.1, 0.0, 0.5, 0.0, 0.2],
                  [0.0, 0.3, 1.0, 0.9, 0.0, 0.0, 0.4, 0.1],
                  [0.1, 0.0, 0.0, 0.2, 1.0, 0.6, 0.7, 0.0]])


def _con(path):
    return duckdb.connect(str(path / "index.duckdb"), read_only=True)


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _matched(found: np.ndarray, truth: np.ndarray) -> list[float]:
    """For each true atom, the best cosine among the found ones."""
    return [max(_cos(f, t) for f in found) for t in truth]


# ---------------------------------------------------------------------------- the sample

def test_position_sample_is_the_bottom_keys_of_all_pairs_whatever_the_batches():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(30, 4, 3, 5)).astype(np.float32)
    ids = np.arange(100, 130)
    per_image, capacity = 6, 40
    # brute force: per image its 6 positions of smallest key; of all of those, the 40 smallest
    keys = position_keys(ids, 15)
    pairs = []
    for b in range(30):
        for p in np.argsort(keys[b], kind="stable")[:per_image]:
            pairs.append((keys[b, p], b, p))
    pairs.sort()
    want = np.stack([maps[b, :, p // 5, p % 5] for _, b, p in pairs[:capacity]])
    whole = PositionSample([4], capacity, per_image)
    for s in (0, 7, 8, 21):  # uneven batches
        e = {0: 7, 7: 8, 8: 21, 21: 30}[s]
        whole.take(0, torch.from_numpy(maps[s:e]), ids[s:e])
    np.testing.assert_array_equal(whole.layer(0), want)
    # a channels-last map (as the taps may see it) gives the same sample
    last = PositionSample([4], capacity, per_image)
    last.take(0, torch.from_numpy(maps).contiguous(memory_format=torch.channels_last), ids)
    np.testing.assert_array_equal(last.layer(0), want)
    # two shards (odd and even images) merged through their saved states: the same sample
    a, b = PositionSample([4], capacity, per_image), PositionSample([4], capacity, per_image)
    a.take(0, torch.from_numpy(maps[::2]), ids[::2])
    b.take(0, torch.from_numpy(maps[1::2]), ids[1::2])
    a = PositionSample.from_state(a.state_dict())
    a.merge(PositionSample.from_state(b.state_dict()))
    np.testing.assert_array_equal(a.layer(0), want)
    # a map smaller than per_image: every position
    small = PositionSample([4], 1000, per_image)
    small.take(0, torch.from_numpy(maps[:, :, :1, :2]), ids)
    assert small.layer(0).shape == (60, 4)


def test_keys_are_uniform_and_depend_on_image_and_position_only():
    k = position_keys(np.arange(2000), 50)
    assert k.shape == (2000, 50) and 0 <= k.min() and k.max() < 1
    assert abs(k.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(position_keys(np.array([7]), 50)[0], k[7])


# ---------------------------------------------------------------------------- fits

def _mixture(n=3000, seed=1):
    """Non-negative codes over PARTS: a third of the vectors pure (one part), the rest mixtures."""
    rng = np.random.default_rng(seed)
    codes = rng.exponential(size=(n, 3)) * (rng.random((n, 3)) < 0.5)
    pure = rng.integers(0, 3, n // 3)
    codes[: n // 3] = 0
    codes[np.arange(n // 3), pure] = rng.uniform(0.5, 2.0, n // 3)
    return codes, codes @ PARTS


def test_nmf_recovers_a_planted_non_negative_mixture():
    codes, x = _mixture()
    d = fit_nmf(x, 3, seed=0)
    cos = _matched(d.atoms, PARTS)
    assert min(cos) >= 0.95, cos
    assert d.r2 > 0.999 and d.clipped == 0
    # the map is pinv(W) a: in the atoms' cone it is the non-negative code itself
    assert d.r2_map > 0.999
    order = [int(np.argmax([_cos(a, t) for a in d.atoms])) for t in PARTS]
    got = (x @ d.weights.T)[:, order]
    np.testing.assert_allclose(got, codes * np.linalg.norm(PARTS, axis=1)[None, :], atol=1e-3 * codes.max())


def test_sae_recovers_a_planted_sparse_code():
    rng = np.random.default_rng(3)
    C, K, n = 24, 6, 6000
    atoms = rng.normal(size=(K, C))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, K))
    for i in range(n):  # one or two atoms active per vector
        on = rng.choice(K, size=rng.integers(1, 3), replace=False)
        codes[i, on] = rng.uniform(0.5, 2.0, len(on))
    x = codes @ atoms + 0.3
    d = fit_sae(x, K, steps=1500, l1=0.02, seed=0)
    cos = _matched(d.atoms, atoms)
    assert min(cos) >= 0.9, cos
    assert d.r2 > 0.99 and 1 <= d.l0 <= 2  # the planted code has 1.5 active atoms on average
    assert d.loss[-1] < d.loss[0]


def test_fits_are_deterministic_under_a_seed():
    _, x = _mixture(800)
    for fit in (lambda s: fit_nmf(x, 3, seed=s), lambda s: fit_sae(x, 3, steps=200, seed=s)):
        a, b = fit(0), fit(0)
        np.testing.assert_array_equal(a.atoms, b.atoms)
        np.testing.assert_array_equal(a.weights, b.weights)
        assert a.r2 == b.r2


def test_baselines_against_hand_computations():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 6)) * [5, 1, 1, 1, 1, 0.1]
    x[:, 1] = 2 * x[:, 0] + 0.01 * rng.normal(size=400)  # channel 1 follows channel 0
    b = baselines(x, 1)
    # one neuron (the largest variance, 1 - as it follows 0, 1 is the largest): every channel regressed on it
    xc = x - x.mean(0)
    pick = int(np.argmax(xc.var(0)))
    coef = np.linalg.lstsq(xc[:, [pick]], xc, rcond=None)[0]
    assert b["channel"] == pytest.approx(r2_score(x, x.mean(0) + xc[:, [pick]] @ coef), abs=1e-9)
    _, s, _ = np.linalg.svd(xc, full_matrices=False)
    assert b["pca"] == pytest.approx(s[0] ** 2 / (s ** 2).sum(), abs=1e-9)
    assert b["pca"] >= b["channel"]


def test_spec_errors_name_the_fix():
    from neuronindex.errors import UsageError

    with pytest.raises(UsageError, match="--atoms"):
        DictionarySpec(("nmf",), atoms=0).validate()
    with pytest.raises(UsageError, match="nmf or sae"):
        DictionarySpec(("pca",)).validate()
    assert DictionarySpec(atoms=16).atoms_for(8) == 4 and DictionarySpec(atoms=16).atoms_for(1) == 1


# ---------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def parts_images(tmp_path_factory):
    """48 black 8x8 images, each with a 3x3 square of one pure input colour (red, green or blue in
    turn) at a distinct intensity, and a 2x2 square mixing two colours at half strength."""
    from PIL import Image

    root = tmp_path_factory.mktemp("parts") / "parts"
    rng = np.random.default_rng(11)
    for i in range(48):
        img = np.zeros((8, 8, 3), np.uint8)
        y, x = rng.integers(0, 3, 2)
        img[y:y + 3, x:x + 3, i % 3] = 60 + 4 * i
        mix = rng.choice(3, 2, replace=False)
        img[6:8, 6:8, mix] = 100
        d = root / ("abc"[i % 3])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def parts_loaded():
    from neuronindex.nets.models import Preprocessing, load_model

    return load_model("python:tinymodels:planted_parts",
                      preprocessing=Preprocessing(input_size=(8, 8), geometry="resize", resize=None,
                                                  mean=(0, 0, 0), std=(1, 1, 1)))


PARAMS = dict(top_k=5, bottom_k=3, batch_size=16, directions="nmf,sae", atoms=3, dict_samples=1000, dict_positions=8)


@pytest.fixture(scope="module")
def parts_index(tmp_path_factory, parts_images, parts_loaded):
    path = tmp_path_factory.mktemp("partsidx") / "idx"
    ingest(parts_loaded, str(parts_images), "conv1", path, progress=False, params=IngestParams(**PARAMS))
    return path


def test_nmf_atoms_of_a_planted_layer_are_its_parts_with_their_images(parts_index, parts_images):
    con = _con(parts_index)
    rows = con.execute("SELECT d.name, d.weights, d.\"offset\", n.id FROM directions d JOIN neurons n "
                       "ON n.id = d.neuron_id WHERE d.kind = 'nmf' ORDER BY d.ordinal").fetchall()
    assert [r[0] for r in rows] == ["nmf1", "nmf2", "nmf3"]
    weights = np.array([r[1] for r in rows], dtype=np.float64)
    atoms = np.linalg.pinv(weights).T  # the map is pinv(W) a, so W comes back as pinv of the weights
    assert min(_matched(atoms, PARTS)) >= 0.95
    from neuronindex.data import open_source

    images = open_source(str(parts_images)).images
    for colour in range(3):
        j = int(np.argmax([_cos(a, PARTS[colour]) for a in atoms]))
        top = [r[0] for r in con.execute("SELECT image_id - (SELECT min(id) FROM images) FROM topk WHERE neuron_id = ? "
                                         "ORDER BY rank", [rows[j][3]]).fetchall()]
        # brute force: the atom's code is the input colour's value; the brightest pure squares win
        from PIL import Image

        peak = [int(np.asarray(Image.open(r.path))[..., colour].max()) for r in images]
        want = sorted(range(len(images)), key=lambda i: (-peak[i], i))[:5]
        assert top == want
    fit = {r[0]: r[1:] for r in con.execute("SELECT kind, r2, r2_pca, atoms FROM dictionaries").fetchall()}
    assert set(fit) == {"nmf", "sae"}
    assert fit["nmf"][0] > 0.999 and fit["nmf"][1] > 0.999 and fit["nmf"][2] == 3  # exactly rank 3


def test_learn_on_a_stored_layer_gives_the_ingests_dictionaries(tmp_path, parts_images, parts_loaded, parts_index,
                                                               cli_runner):
    from neuronindex_cli.main import cli

    plain = tmp_path / "plain"
    ingest(parts_loaded, str(parts_images), "conv1", plain, progress=False,
           params=IngestParams(**{**PARAMS, "directions": "none"}))
    out = cli_runner.invoke(cli, ["directions", "learn", str(plain), "--layer", "conv1", "--kind", "nmf", "--kind", "sae",
                                  "--atoms", "3", "--dict-samples", "1000", "--dict-positions", "8", "-q"])
    assert out.exit_code == 0, out.output
    assert "3 nmf atoms, R2 1.000" in out.output
    query = "SELECT d.name, d.weights, d.\"offset\" FROM directions d ORDER BY d.kind, d.ordinal"
    learned, ingested = _con(plain).execute(query).fetchall(), _con(parts_index).execute(query).fetchall()
    assert [r[0] for r in learned] == [r[0] for r in ingested] == ["nmf1", "nmf2", "nmf3", "sae1", "sae2", "sae3"]
    np.testing.assert_allclose(np.array([r[1] for r in learned]), np.array([r[1] for r in ingested]), atol=1e-5)
    tops = "SELECT n.unit, list(t.image_id ORDER BY t.rank) FROM topk t JOIN neurons n ON n.id = t.neuron_id " \
           "WHERE n.kind IN ('nmf', 'sae') GROUP BY 1 ORDER BY 1"
    assert _con(plain).execute(tops).fetchall() == _con(parts_index).execute(tops).fetchall()
    # a second dictionary of a kind is refused, with the reason; an unknown layer names the ones there are
    again = cli_runner.invoke(cli, ["directions", "learn", str(plain), "--layer", "conv1", "--kind", "nmf", "-q"])
    assert again.exit_code != 0 and "already has nmf atoms" in again.output and "Traceback" not in again.output
    bad = cli_runner.invoke(cli, ["directions", "learn", str(plain), "--layer", "conv9", "--kind", "nmf", "-q"])
    assert bad.exit_code != 0 and "conv1" in bad.output


def test_shards_merge_to_the_same_dictionaries_as_one_run(tmp_path, parts_images, parts_loaded, parts_index):
    states = []
    for i in range(2):
        state = tmp_path / f"s{i}.npz"
        ingest(parts_loaded, str(parts_images), "conv1", tmp_path / "x", progress=False, state_out=str(state),
               params=IngestParams(**PARAMS, shard=(i, 2)))
        states.append(str(state))
    merge_states(states, tmp_path / "merged", progress=False)
    query = "SELECT kind, atoms, samples, round(r2, 6), round(l0, 6) FROM dictionaries ORDER BY kind"
    assert _con(tmp_path / "merged").execute(query).fetchall() == _con(parts_index).execute(query).fetchall()
    w = "SELECT weights FROM directions ORDER BY kind, ordinal"
    np.testing.assert_allclose(np.array([r[0] for r in _con(tmp_path / "merged").execute(w).fetchall()]),
                               np.array([r[0] for r in _con(parts_index).execute(w).fetchall()]), atol=1e-5)


def test_atoms_are_units_everywhere(parts_index):
    from fastapi.testclient import TestClient

    import neuronindex
    from neuronindex.service.app import create_app

    with neuronindex.open(parts_index) as idx:
        sae = idx.search("kind:sae").rows()
        assert [r["unit"] for r in sae] == ["sae1", "sae2", "sae3"]
        assert {r["kind"] for r in idx.search("atoms conv1").rows()} == {"nmf", "sae"}
        assert len(idx.search("nmf conv1").rows()) == 3
        assert idx.neuron("planted_parts/conv1/nmf1").direction()["kind"] == "nmf"
        assert len(idx.neuron("planted_parts/conv1/nmf2").topk().rows()) == 5
    client = TestClient(create_app(parts_index))
    assert client.get("/api/search", params={"q": "kind:nmf"}).json()["rows"][0]["kind"] == "nmf"
    page = client.get("/neuron/planted_parts/conv1/sae2")
    assert page.status_code == 200 and "sae" in page.text
    assert client.get("/api/neurons/planted_parts/conv1/nmf1/nf.png").headers["content-type"] == "image/png"


def test_comparison_table_against_hand_computations(parts_index, cli_runner):
    from fastapi.testclient import TestClient

    import neuronindex
    from neuronindex.service.app import create_app
    from neuronindex_cli.main import cli

    con = _con(parts_index)
    with neuronindex.open(parts_index) as idx:
        rows = idx.dictionaries().rows()
        assert [r["kind"] for r in rows] == ["channel", "nmf", "sae"]
        for r in rows:
            got = con.execute("SELECT count(*), avg(top_class_share), avg(color_index) FROM neurons n JOIN layers l ON "
                              "l.id = n.layer_id WHERE l.name = 'conv1' AND n.kind = ? AND NOT n.dead", [r["kind"]]).fetchone()
            assert r["units"] == got[0] and r["top_class_share"] == pytest.approx(got[1])
            assert r["color_index"] == pytest.approx(got[2])
            # redundancy by hand: the mean Jaccard overlap of every pair's top-20 image sets
            order = "act_std DESC NULLS LAST, id" if r["kind"] == "channel" else "channel"
            ids = [x[0] for x in con.execute(f"SELECT id FROM neurons WHERE kind = ? AND NOT dead ORDER BY {order} LIMIT 3",
                                             [r["kind"]]).fetchall()]
            sets = [{x[0] for x in con.execute("SELECT image_id FROM topk WHERE neuron_id = ? AND rank <= 20", [i]).fetchall()}
                    for i in ids]
            pairs = [len(a & b) / len(a | b) for j, a in enumerate(sets) for b in sets[j + 1:]]
            assert r["redundancy"] == pytest.approx(np.mean(pairs))
        fits = {f["kind"]: f for f in idx.dictionary_fits().rows()}
        assert rows[0]["r2"] == fits["nmf"]["r2_neurons"] and rows[1]["r2"] == fits["nmf"]["r2"]
    out = cli_runner.invoke(cli, ["directions", "compare", str(parts_index), "--format", "csv"])
    assert out.exit_code == 0 and out.output.splitlines()[0].startswith("model,layer,kind,units")
    client = TestClient(create_app(parts_index))
    data = client.get("/api/dictionaries").json()
    assert data["ok"] and [r["kind"] for r in data["rows"]] == ["channel", "nmf", "sae"] and len(data["fits"]) == 2
    assert "learned atoms" in client.get("/model/planted_parts").text


@pytest.mark.slow
def test_atoms_are_optimisable_like_neurons(tmp_path, parts_index):
    """Activation maximisation of the atoms: an NMF atom of the planted layer is one input colour's
    value, so its optimised image must drive it at least about as hard as the brightest square."""
    import shutil

    import neuronindex
    from neuronindex.jobs import visualize as viz
    from neuronindex.science.optvis.render import VizParams

    path = tmp_path / "idx"
    shutil.copytree(parts_index, path)
    viz.visualize_layers(path, ["conv1"], params=VizParams(steps=256), progress=False)
    with neuronindex.open(path) as idx:
        rows = idx.sql("SELECT n.unit, n.kind, n.viz_activation_ratio AS ratio FROM neuron_view n "
                       "ORDER BY n.kind, n.unit").rows()
    nmf = [r for r in rows if r["kind"] == "nmf"]
    assert [r["unit"] for r in nmf] == ["nmf1", "nmf2", "nmf3"]
    assert all(r["ratio"] >= 0.9 for r in nmf), rows
    # an SAE atom that never fires on the data has nothing to compare with (as a dead neuron)
    assert any(r["ratio"] is not None for r in rows if r["kind"] == "sae")


def test_report_has_the_comparison_table(parts_index, tmp_path):
    import neuronindex
    from neuronindex.report import render

    with neuronindex.open(parts_index) as idx:
        render(idx, tmp_path / "report.html")
        rows = idx.dictionaries().rows()
    page = (tmp_path / "report.html").read_text()
    assert "learned atoms" in page
    nmf = next(r for r in rows if r["kind"] == "nmf")
    assert f"<td>nmf</td><td>{nmf['units']}</td><td>{nmf['top_class_share']:.3f}</td>" in page


def test_cheap_checks_come_before_the_model_loads(parts_index, cli_runner, monkeypatch):
    """A second dictionary of a kind, or a bad --directions, is refused before any model is loaded."""
    from neuronindex.errors import UsageError
    from neuronindex.jobs import directions as directions_job
    from neuronindex_cli.main import cli

    def never(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(directions_job, "prepare", never)
    with pytest.raises(UsageError, match="already has nmf atoms"):
        directions_job.learn(parts_index, "conv1", ["nmf"], progress=False)
    out = cli_runner.invoke(cli, ["ingest", "--model", "python:no.such:model", "--images", "nowhere", "--layers", "conv1",
                                  "--index", "x", "--directions", "nmf,pca"])
    assert out.exit_code != 0 and "unknown direction kind 'pca'" in out.output
