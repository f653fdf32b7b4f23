"""Seed 001: bottom images and directions (SVD, random, user), checked against dense numpy and brute force."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch

from neuronindex_cli.main import cli
from neuronindex.science.directions import random_directions, rank_rule, svd_directions
from neuronindex.science.stats import Covariance
from neuronindex.errors import UsageError
from neuronindex.jobs.ingest import IngestParams, ingest, merge_states
from neuronindex.science.stats import LayerStats


def _con(path):
    return duckdb.connect(str(path / "index.duckdb"), read_only=True)


# ---------------------------------------------------------------------------- the streaming SVD

def _structured(n=300, C=12, seed=0):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3)) * [5.0, 2.0, 1.0]
    X = latent @ rng.normal(size=(3, C)) + rng.normal(scale=0.3, size=(n, C)) + rng.normal(size=C) * 10
    X[:, 4] *= 40  # channels on very different scales: the standardisation must undo this
    return X


def test_streaming_svd_equals_dense_numpy_svd():
    X = _structured()
    n, C = X.shape
    whole, left, right = Covariance([C]), Covariance([C]), Covariance([C])
    for s in range(0, n, 37):  # uneven batches
        whole.add(X[s:s + 37])
    left.add(X[:111])
    right.add(X[111:])
    left.merge(Covariance.from_state(right.state_dict()))  # shards merge exactly, through their saved state
    Z = (X - X.mean(0)) / X.std(0)
    _, s, vt = np.linalg.svd(Z, full_matrices=False)
    for cov in (whole, left):
        mean, std, corr, count = cov.layer(0)
        assert count == n
        np.testing.assert_allclose(mean, X.mean(0), rtol=1e-10)
        np.testing.assert_allclose(std, X.std(0), rtol=1e-10)
        vectors, evals = svd_directions(corr, n, "5", 5)
        np.testing.assert_allclose(np.sqrt(evals * n), s[:5], rtol=1e-5)
        for v, ref in zip(vectors, vt[:5]):
            assert abs(abs(float(v @ ref)) - 1) < 1e-5  # the same vector up to its (arbitrary) sign
            assert v[np.abs(v).argmax()] > 0  # the sign rule: largest entry positive


def test_rank_rules_match_hand_counts():
    X = _structured()
    cov = Covariance([X.shape[1]])
    cov.add(X)
    _, _, corr, n = cov.layer(0)
    evals = np.sort(np.linalg.eigvalsh(corr))[::-1]
    assert len(svd_directions(corr, n, "kaiser", 50)[1]) == int((evals > 1).sum())
    share = np.cumsum(evals) / evals.sum()
    assert len(svd_directions(corr, n, "var:0.9", 50)[1]) == int(np.argmax(share >= 0.9)) + 1
    cut = float(np.sqrt(evals[2] * n)) - 1e-6  # keeps exactly three singular values
    assert len(svd_directions(corr, n, f"sv:{cut}", 50)[1]) == 3
    assert len(svd_directions(corr, n, "kaiser", 2)[1]) == 2  # the cap
    for bad in ("var:2", "sv:x", "0", "biggest"):
        with pytest.raises(UsageError):
            rank_rule(bad)


def test_random_directions_pass_the_variance_quantile():
    X = _structured(C=20)
    cov = Covariance([20])
    cov.add(X)
    _, _, corr, _ = cov.layer(0)
    tail, base = random_directions(corr, 5, 0.9, seed=3)
    assert tail.shape == base.shape == (5, 20)
    np.testing.assert_allclose(np.linalg.norm(tail, axis=1), 1, rtol=1e-12)
    # the cut-off, by hand: the 0.9 quantile of u'Ru over the same 1,000 draws
    rng = np.random.default_rng(3)
    rng.standard_normal((5, 20))
    pool = rng.standard_normal((1000, 20))
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    cut = np.quantile(np.einsum("kc,cd,kd->k", pool, corr, pool), 0.9)
    assert (np.einsum("kc,cd,kd->k", tail, corr, tail) >= cut).all()
    assert not (np.einsum("kc,cd,kd->k", base, corr, base) >= cut).all()  # the baseline is not filtered


# ---------------------------------------------------------------------------- bottom lists

def _bottom_brute(vals, k):
    out = []
    for c in range(vals.shape[1]):
        order = sorted(range(len(vals)), key=lambda i: (vals[i, c], i))[:k]
        out.append(order)
    return np.array(out)


def test_bottom_lists_equal_brute_force_whatever_the_batching_and_sharding():
    rng = np.random.default_rng(1)
    vals = np.round(rng.normal(size=(90, 5)), 1).astype(np.float32)  # rounded: many ties
    vals[:, 4] = 0.0  # a rectified channel that never fires: bottom = the first images
    truth = _bottom_brute(vals, 6)

    def feed(stats, rows):
        for s in range(0, len(rows), 1 + len(rows) % 7):
            part = rows[s:s + 1 + len(rows) % 7]
            v = torch.from_numpy(vals[part])
            loc = torch.full(v.shape, 0, dtype=torch.long)
            stats.add_summary((v, torch.zeros(5, dtype=torch.float64), loc, 1, 1), torch.tensor(part))

    whole = LayerStats(5, top_k=3, curve_len=3, bottom_k=6, probe_size=0)
    feed(whole, np.arange(90))
    shards = []
    for i in range(3):
        st = LayerStats(5, top_k=3, curve_len=3, bottom_k=6, probe_size=0)
        feed(st, np.arange(i, 90, 3))
        shards.append(LayerStats.from_state(st.state_dict()))
    shards[0].merge(shards[1])
    shards[0].merge(shards[2])
    for st in (whole, shards[0]):
        res = st.result()
        np.testing.assert_array_equal(res.bottom_ids, truth)
        np.testing.assert_array_equal(res.bottom_values, np.take_along_axis(vals.T, truth, 1))
    assert list(whole.result().bottom_ids[4]) == [0, 1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def flat_colours(tmp_path_factory):
    """40 flat-colour 8x8 images in two folders: the planted layer is exactly rank 2 on them."""
    from PIL import Image

    root = tmp_path_factory.mktemp("flat") / "flat"
    rng = np.random.default_rng(7)
    for i in range(40):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        Image.fromarray(np.broadcast_to(colour, (8, 8, 3)).copy()).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def planted_loaded():
    from neuronindex.nets.models import Preprocessing, load_model

    return load_model("python:tinymodels:planted",
                      preprocessing=Preprocessing(input_size=(8, 8), geometry="resize", resize=None,
                                                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))


def _maps(loaded, source):
    """Brute force: every image's conv1 map, straight from the module (B, C, H, W), in position order."""
    from neuronindex.data import open_source
    from neuronindex.nets.extract import image_batches

    images = open_source(str(source))
    out = []
    with torch.no_grad():
        for batch, _, _ in image_batches(images, loaded.preprocessing, 64):
            out.append(loaded.module.conv1(loaded.preprocessing.normalize(batch)))
    return torch.cat(out).numpy()


def _brute_top(scores, k, descending=True):
    """Image order by score (descending or ascending), ties by image position."""
    key = (lambda i: (-scores[i], i)) if descending else (lambda i: (scores[i], i))
    return sorted(range(len(scores)), key=key)[:k]


@pytest.fixture(scope="module")
def planted_index(tmp_path_factory, flat_colours, planted_loaded):
    path = tmp_path_factory.mktemp("planted") / "idx"
    ingest(planted_loaded, str(flat_colours), "conv1", path, progress=False,
           params=IngestParams(top_k=5, bottom_k=4, batch_size=16, directions="svd,random", random_directions=2))
    return path


def test_planted_rank2_directions_are_recovered(planted_index, planted_loaded, flat_colours):
    con = _con(planted_index)
    rows = con.execute("SELECT d.name, d.vector, d.variance, d.explained, n.key FROM directions d "
                       "JOIN neurons n ON n.id = d.neuron_id WHERE d.kind = 'svd' ORDER BY d.ordinal").fetchall()
    assert [r[0] for r in rows] == ["svd1", "svd2"]  # Kaiser: exactly the two planted dimensions
    assert rows[0][4] == "planted/conv1/svd1"
    assert abs(sum(r[3] for r in rows) - 1) < 1e-6  # together they carry all the variance
    maps = _maps(planted_loaded, flat_colours)
    pooled = maps.max(axis=(2, 3))  # flat images: every position is the same
    Z = (pooled - pooled.mean(0)) / pooled.std(0)
    # the true row space of Z is spanned by D^-1 M: every recovered vector lies in it
    M = np.array(planted_loaded.module.MIX) / pooled.std(0)[:, None]
    Q, _ = np.linalg.qr(M)
    for _, vector, variance, _, _ in rows:
        v = np.array(vector, dtype=float)
        assert np.linalg.norm(v - Q @ (Q.T @ v)) < 1e-4
        assert abs(variance - float(v @ np.cov(Z.T, bias=True) @ v)) < 1e-4


def test_direction_top_and_bottom_lists_equal_brute_force(planted_index, planted_loaded, flat_colours):
    con = _con(planted_index)
    maps = _maps(planted_loaded, flat_colours)
    first = con.execute("SELECT min(id) FROM images").fetchone()[0]
    units = con.execute("SELECT n.id, n.key, d.weights, d.\"offset\" FROM directions d JOIN neurons n "
                        "ON n.id = d.neuron_id ORDER BY n.channel").fetchall()
    assert len(units) == 2 + 2 * 2  # svd1-2, random1-4 (2 past the cut-off, 2 baseline)
    for nid, key, weights, offset in units:
        proj = np.einsum("c,bchw->bhw", np.array(weights, dtype=np.float32), maps) + np.float32(offset)
        hi, lo = proj.reshape(len(proj), -1).max(1), proj.reshape(len(proj), -1).min(1)
        top = con.execute("SELECT image_id - ?, activation FROM topk WHERE neuron_id = ? ORDER BY rank",
                          [first, nid]).fetchall()
        bottom = con.execute("SELECT image_id - ?, activation, y, x FROM bottomk WHERE neuron_id = ? ORDER BY rank",
                             [first, nid]).fetchall()
        assert [t[0] for t in top] == _brute_top(np.round(hi, 4), 5), key
        np.testing.assert_allclose([t[1] for t in top], np.sort(hi)[::-1][:5], rtol=1e-5, atol=1e-5)
        assert [b[0] for b in bottom] == _brute_top(np.round(lo, 4), 4, descending=False), key
        np.testing.assert_allclose([b[1] for b in bottom], np.sort(lo)[:4], rtol=1e-5, atol=1e-5)
        assert all(b[2] == 0 and b[3] == 0 for b in bottom)  # flat maps: the first argmin is (0, 0)


def test_neuron_bottom_lists_equal_brute_force(planted_index, planted_loaded, flat_colours):
    con = _con(planted_index)
    maps = _maps(planted_loaded, flat_colours)
    first = con.execute("SELECT min(id) FROM images").fetchone()[0]
    for c in range(6):
        rows = con.execute("SELECT b.image_id - ?, b.activation, b.y, b.x, b.box_x0, b.box_x1 FROM bottomk b "
                           "JOIN neurons n ON n.id = b.neuron_id WHERE n.key = ? ORDER BY b.rank",
                           [first, f"planted/conv1/{c}"]).fetchall()
        smax = maps[:, c].reshape(len(maps), -1).max(1)
        assert [r[0] for r in rows] == _brute_top(np.round(smax, 4), 4, descending=False)
        np.testing.assert_allclose([r[1] for r in rows], np.sort(smax)[:4], rtol=1e-5, atol=1e-5)
        assert all((r[2], r[3], r[5] - r[4]) == (0, 0, 1) for r in rows)  # argmax of a flat map, 1x1 field


def test_user_direction_of_one_channel_ranks_images_like_that_neuron(tmp_path, image_folder, tiny_loaded, cli_runner):
    path = tmp_path / "u"
    ingest(tiny_loaded, str(image_folder), "conv1,conv2", path, progress=False, params=IngestParams(top_k=6))
    np.save(tmp_path / "e3.npy", np.eye(6)[3])
    r = cli_runner.invoke(cli, ["directions", "add", str(path), "--layer", "conv2", "--vector", str(tmp_path / "e3.npy"),
                                "--name", "only3", "-q"])
    assert r.exit_code == 0, r.output
    con = _con(path)
    tops = {key: con.execute("SELECT image_id, y, x FROM topk t JOIN neurons n ON n.id = t.neuron_id WHERE n.key = ? "
                             "ORDER BY rank", [key]).fetchall() for key in ("tiny_cnn/conv2/3", "tiny_cnn/conv2/only3")}
    assert tops["tiny_cnn/conv2/3"] == tops["tiny_cnn/conv2/only3"]
    kind, variance, nf = con.execute("SELECT n.kind, d.variance, n.nf_n FROM neurons n JOIN directions d "
                                     "ON d.neuron_id = n.id WHERE n.key = 'tiny_cnn/conv2/only3'").fetchone()
    assert kind == "user" and abs(variance - 1) < 1e-6 and nf > 0  # one standardised channel: variance 1
    # it saw every image, and has class means (hence a CSI) like the neuron
    n_images, classes = con.execute("SELECT n.n_images, (SELECT count(*) FROM class_means m WHERE m.neuron_id = n.id) "
                                    "FROM neurons n WHERE n.key = 'tiny_cnn/conv2/only3'").fetchone()
    assert n_images == 24 and classes == 3
    before = con.execute("SELECT count(*) FROM neuron_features").fetchone()[0]
    con.close()
    # the neurons' own rows are untouched; the direction has its NF, indexes and embeddings
    assert before == 4 + 6 + 1
    # recomputing pass 2 (another NF threshold) keeps the direction's map: the same NF images back
    nf = dict(_con(path).execute("SELECT n.key, f.nf_png FROM neuron_features f JOIN neurons n ON n.id = f.neuron_id")
              .fetchall())
    r = cli_runner.invoke(cli, ["features", str(path), "-q"])
    assert r.exit_code == 0, r.output
    again = dict(_con(path).execute("SELECT n.key, f.nf_png FROM neuron_features f JOIN neurons n "
                                    "ON n.id = f.neuron_id").fetchall())
    assert again == nf and "tiny_cnn/conv2/only3" in again
    bad = [(["--vector", str(tmp_path / "e3.npy"), "--layer", "conv1"], "has 6 values but the layer has 4 channels"),
           (["--vector", str(tmp_path / "e3.npy"), "--layer", "conv9"], "no layer 'conv9'"),
           (["--vector", str(tmp_path / "e3.npy"), "--layer", "conv2", "--name", "only3"], "already has a unit"),
           (["--vector", str(tmp_path / "missing.npy"), "--layer", "conv2"], "does not exist")]
    for args, message in bad:
        r = cli_runner.invoke(cli, ["directions", "add", str(path), *args, "-q"])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, (args, r.output)


def test_directions_in_search_api_and_gallery(planted_index):
    from fastapi.testclient import TestClient

    import neuronindex
    from neuronindex.service import create_app

    with neuronindex.open(planted_index) as idx:
        assert [r["key"] for r in idx.search("svd conv1").rows()] == ["planted/conv1/svd1", "planted/conv1/svd2"]
        assert {r["kind"] for r in idx.search("kind:random").rows()} == {"random"}
        assert {r["kind"] for r in idx.search("conv1").rows()} == {"channel"}  # neurons unless directions are asked for
        assert len(idx.search("sv>0").rows()) == 6
        assert len(idx.search("kind:all").rows()) == 12
        assert idx.summary().rows()[0]["neurons"] == 6 and idx.summary().rows()[0]["directions"] == 6
        assert len(idx.neuron("planted/conv1/svd2").bottomk().rows()) == 4
        assert idx.neuron("planted/conv1/2").direction() is None
    client = TestClient(create_app(planted_index))
    data = client.get("/api/neurons/planted/conv1/svd1").json()
    assert data["direction"]["kind"] == "svd" and len(data["bottomk"]) == 4 and len(data["direction"]["channels"]) == 6
    assert client.get("/api/neurons/planted/conv1/svd1/bottom/1.png").headers["content-type"] == "image/png"
    page = client.get("/neuron/planted/conv1/svd1").text
    assert "bottom images" in page and "singular value" in page
    assert "planted/conv1/random3" in client.get("/layer/planted/conv1").text
    assert client.get("/api/search", params={"q": "kind:nothing"}).status_code == 400


def test_shards_merge_bottom_lists_and_directions_like_one_run(tmp_path, flat_colours, planted_loaded):
    params = dict(top_k=5, bottom_k=4, batch_size=8, directions="svd,random", random_directions=1)
    ingest(planted_loaded, str(flat_colours), "conv1", tmp_path / "one", progress=False, params=IngestParams(**params))
    states = []
    for i in range(2):
        state = tmp_path / f"s{i}.npz"
        ingest(planted_loaded, str(flat_colours), "conv1", tmp_path / "x", progress=False, state_out=str(state),
               params=IngestParams(**params, shard=(i, 2)))
        states.append(str(state))
    merge_states(states, tmp_path / "merged", progress=False)
    query = ("SELECT n.key, b.rank, b.image_id, round(b.activation, 5), b.y, b.x FROM bottomk b "
             "JOIN neurons n ON n.id = b.neuron_id ORDER BY 1, 2")
    dirs = "SELECT name, round(singular_value, 4), round(explained, 6) FROM directions ORDER BY 1"
    one, merged = _con(tmp_path / "one"), _con(tmp_path / "merged")
    assert one.execute(query).fetchall() == merged.execute(query).fetchall()
    assert one.execute(dirs).fetchall() == merged.execute(dirs).fetchall()
    # shards made with other settings are refused, with what differs
    other = tmp_path / "other.npz"
    ingest(planted_loaded, str(flat_colours), "conv1", tmp_path / "x", progress=False, state_out=str(other),
           params=IngestParams(**{**params, "bottom_k": 2}, shard=(1, 2)))
    from neuronindex.errors import IngestError

    with pytest.raises(IngestError, match="bottom_k"):
        merge_states([states[0], str(other)], tmp_path / "bad", progress=False)


def test_bottom_locations_are_the_first_maximum_of_each_bottom_image():
    """Pass 1 takes the location of the maximum only for pairs that can enter a bottom list; the
    stored ones equal the first argmax of each bottom image's map (row-major, as for the top list)."""
    rng = np.random.default_rng(4)
    maps = np.round(rng.normal(size=(50, 3, 4, 5)), 1).astype(np.float32)  # ties within maps too
    stats = LayerStats(3, top_k=4, curve_len=4, bottom_k=5, probe_size=0)
    for s in range(0, 50, 8):
        stats.add(torch.from_numpy(maps[s:s + 8]), torch.arange(s, min(s + 8, 50)))
    res = stats.result()
    smax = maps.reshape(50, 3, -1).max(2)
    np.testing.assert_array_equal(res.bottom_ids, _bottom_brute(smax, 5))
    for c in range(3):
        for r, img in enumerate(res.bottom_ids[c]):
            flat = int(np.argmax(maps[img, c].ravel()))
            assert (res.bottom_y[c, r], res.bottom_x[c, r]) == divmod(flat, 5)


def test_mean_pooling_directions_are_the_svd_of_spatial_means(tmp_path, image_folder, tiny_loaded):
    """--direction-pooling mean: the SVD is of the image x channel matrix of each map's spatial mean,
    computed here by brute force from the model's own conv2 maps."""
    ingest(tiny_loaded, str(image_folder), "conv2", tmp_path, progress=False,
           params=IngestParams(top_k=4, directions="svd", direction_pooling="mean", svd_rank="3"))
    maps = []

    def keep(_m, _i, out):
        maps.append(out.detach())  # `conv2` names the module: its output, before the ReLU

    from neuronindex.data import open_source
    from neuronindex.nets.extract import image_batches

    hook = tiny_loaded.module.conv2.register_forward_hook(keep)
    try:
        with torch.no_grad():
            for batch, _, _ in image_batches(open_source(str(image_folder)), tiny_loaded.preprocessing, 64):
                tiny_loaded.module(tiny_loaded.preprocessing.normalize(batch))
    finally:
        hook.remove()
    X = torch.cat(maps).double().mean(dim=(2, 3)).numpy()
    live = X.std(0) > 0
    Z = (X[:, live] - X[:, live].mean(0)) / X[:, live].std(0)
    _, s, vt = np.linalg.svd(Z, full_matrices=False)
    con = _con(tmp_path)
    rows = con.execute("SELECT singular_value, vector, pooling FROM directions ORDER BY ordinal").fetchall()
    assert [r[2] for r in rows] == ["mean"] * 3
    np.testing.assert_allclose([r[0] for r in rows], s[:3], rtol=1e-4)
    for (_, vector, _), ref in zip(rows, vt[:3]):
        v = np.array(vector)
        assert np.allclose(v[~live], 0) and abs(abs(float(v[live] @ ref)) - 1) < 1e-4
