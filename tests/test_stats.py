"""Pass 1 statistics equal a brute-force computation over all activations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import native_expected

from neuronindex.data import open_source
from neuronindex.nets.extract import Extractor, image_batches
from neuronindex.nets.layers import trace
from neuronindex.science.stats import LayerStats

K = 5


@pytest.fixture(scope="module")
def activations(image_folder, tiny_loaded):
    """All activations of conv1/conv2 (rectified) for every image, in one forward pass."""
    images = open_source(str(image_folder))
    graph = trace(tiny_loaded)
    nodes = [graph.lookup("conv1").name, graph.lookup("conv2").name]
    ext = Extractor(tiny_loaded, nodes)
    batch, pos, _ = next(iter(image_batches(images, tiny_loaded.preprocessing, 1000)))
    acts = ext(batch)
    labels = torch.tensor([images.leaf_classes.index(r.label) for r in images.images])
    return images, nodes, acts, pos, labels


def brute_force(a: np.ndarray, labels: np.ndarray, k: int, n_classes: int):
    B, C, H, W = a.shape
    vals = a.reshape(B, C, -1).max(2)
    out = {"ids": [], "values": [], "y": [], "x": []}
    for c in range(C):
        order = sorted(range(B), key=lambda b: (-vals[b, c], b))[:k]
        out["ids"].append(order)
        out["values"].append([vals[b, c] for b in order])
        where = [int(np.argmax(a[b, c].ravel())) for b in order]
        out["y"].append([w // W for w in where])
        out["x"].append([w % W for w in where])
    out = {k_: np.array(v) for k_, v in out.items()}
    out["mean"] = vals.mean(0)
    out["std"] = vals.std(0)
    out["sparsity"] = (a <= 0).mean(axis=(0, 2, 3))
    out["class_means"] = np.stack([vals[labels == i].mean(0) for i in range(n_classes)])
    out["vals"] = vals
    return out


LAYOUTS = {"nchw": torch.contiguous_format, "channels-last": torch.channels_last}
# the CPU kernels: native (neuronindex/_pass1.cpp, on torch's threads) and numba (the fallback);
# torch's reductions and sorting merge, used on other devices
KERNELS = ["native", "numba", "torch"]


def use_kernels(kernels: str, monkeypatch) -> None:
    from neuronindex.nets import kernels as compiled, summaries
    from neuronindex.science import stats

    if kernels == "native" and compiled.native() is None:
        pytest.skip("the native kernels are not built (see test_native_kernels_are_built)")
    if kernels != "native":
        monkeypatch.setattr(compiled, "native", lambda: None)
    if kernels == "torch":
        monkeypatch.setattr(summaries, "summarize", summaries.summarize_torch)
        monkeypatch.setattr(stats.LayerStats, "_update_top", stats.LayerStats._update_top_torch)


def test_native_kernels_are_built():
    """Where a C++ compiler is at hand the install builds them; a silent fallback to numba would
    leave the native tests skipped and pass 1 slower."""
    from neuronindex.nets import kernels

    if not native_expected():
        pytest.skip("no C++ compiler on this machine")
    assert kernels.native() is not None, "neuronindex._pass1 did not build: see the output of pip install -v -e ."


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("batch_size", [1, 5, 24])
def test_streaming_equals_brute_force(activations, batch_size, layout, kernels, monkeypatch):
    """Every kernel set (native and numba on the CPU; torch, used on other devices) and both
    memory layouts take their own path; a shifted copy of each map has negative values, so
    sparsity counts them as not firing."""
    use_kernels(kernels, monkeypatch)
    images, nodes, acts, pos, labels = activations
    maps = [acts[n] for n in nodes] + [acts[nodes[1]] - acts[nodes[1]].mean()]
    for a in maps:
        expected = brute_force(a.numpy(), labels.numpy(), K, 3)
        st = LayerStats(a.shape[1], top_k=K, curve_len=10, n_classes=3, probe_size=7)
        for s in range(0, a.shape[0], batch_size):
            batch = a[s:s + batch_size].contiguous(memory_format=LAYOUTS[layout])
            st.add(batch, pos[s:s + batch_size], labels[s:s + batch_size])
        r = st.result()
        np.testing.assert_array_equal(r.top_ids, expected["ids"])
        np.testing.assert_array_equal(r.top_values, expected["values"])
        np.testing.assert_array_equal(r.top_y, expected["y"])
        np.testing.assert_array_equal(r.top_x, expected["x"])
        np.testing.assert_allclose(r.act_mean, expected["mean"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(r.act_std, expected["std"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(r.sparsity, expected["sparsity"])
        np.testing.assert_allclose(r.class_means, expected["class_means"], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(r.probe, expected["vals"][:7])
        np.testing.assert_array_equal(r.dead, expected["vals"].max(0) <= 0)


def test_dead_channel_ties_break_by_image(activations):
    images, nodes, acts, pos, labels = activations
    st = LayerStats(4, top_k=K, curve_len=10, n_classes=3)
    st.add(acts[nodes[0]], pos, labels)
    r = st.result()
    assert r.dead[2] and not r.dead[0]
    assert r.top_ids[2].tolist() == [0, 1, 2, 3, 4]
    assert r.auc[2] == 0.0


def test_curve_and_auc(activations):
    images, nodes, acts, pos, labels = activations
    a = acts[nodes[0]]
    st = LayerStats(4, top_k=3, curve_len=30, n_classes=3)
    st.add(a, pos, labels)
    r = st.result()
    vals = np.sort(a.amax(dim=(2, 3)).numpy()[:, 0])[::-1]
    expected = np.zeros(30)
    expected[:24] = vals / vals[0]
    np.testing.assert_allclose(r.curve[0], expected, rtol=1e-6)
    assert r.auc[0] == pytest.approx(expected.sum() / 30, rel=1e-6)


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_merge_into_one_run(activations, shards):
    images, nodes, acts, pos, labels = activations
    a = acts[nodes[1]]
    whole = LayerStats(a.shape[1], top_k=K, curve_len=10, n_classes=3, probe_size=9)
    whole.add(a, pos, labels)
    parts = []
    for i in range(shards):
        idx = torch.arange(i, a.shape[0], shards)
        st = LayerStats(a.shape[1], top_k=K, curve_len=10, n_classes=3, probe_size=9)
        for s in range(0, len(idx), 3):
            j = idx[s:s + 3]
            st.add(a[j], pos[j], labels[j])
        parts.append(LayerStats.from_state(st.state_dict()))
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    r, w = merged.result(), whole.result()
    for key in ("top_ids", "top_values", "top_y", "top_x", "probe", "probe_ids", "class_count", "dead", "sparsity"):
        np.testing.assert_array_equal(getattr(r, key), getattr(w, key))
    for key in ("act_mean", "act_std", "class_means", "auc"):
        np.testing.assert_allclose(getattr(r, key), getattr(w, key), rtol=1e-12)
    assert r.count == w.count


def test_combined_layers_equal_separate_stats(activations):
    from neuronindex.science.stats import split
    from neuronindex.nets.summaries import combine, summarize

    images, nodes, acts, pos, labels = activations
    separate = [LayerStats(acts[n].shape[1], top_k=K, curve_len=10, n_classes=3, probe_size=5) for n in nodes]
    channels = [acts[n].shape[1] for n in nodes]
    both = LayerStats(sum(channels), top_k=K, curve_len=10, n_classes=3, probe_size=5)
    for s in range(0, 24, 5):
        sl = slice(s, s + 5)
        for n, st in zip(nodes, separate):
            st.add(acts[n][sl], pos[sl], labels[sl])
        thresholds = both.threshold().split(channels)
        both.add_summary(combine([summarize(acts[n][sl], t) for n, t in zip(nodes, thresholds)]), pos[sl], labels[sl])
    for part, st in zip(split(both.result(), channels), separate):
        whole = st.result()
        for key in ("top_ids", "top_values", "top_y", "top_x", "sparsity", "probe", "class_means", "act_mean"):
            np.testing.assert_array_equal(getattr(part, key), getattr(whole, key))


@pytest.mark.parametrize("kernels", ["native", "numba"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", [(3, 16, 32, 32), (2, 5, 8, 8), (2, 3, 7, 7), (2, 7, 9, 9), (2, 2, 20, 20),
                                   (3, 4, 1, 1), (2, 3, 17, 17), (2, 3, 10, 10), (2, 5, 3, 3), (2, 37, 5, 5),
                                   (2, 32, 3, 3), (2, 48, 2, 2), (2, 80, 3, 3)])
def test_compiled_reduction_on_ties_and_odd_shapes(shape, layout, kernels, monkeypatch):
    """The compiled passes read maps in vector lanes (channels-last rows folded to ~64 values,
    or up to 64 channels at a time, and for native a scalar rest when channels are not a multiple
    of 16; channels-first rows in chunks of 16-64 with a tail): small integers make ties
    everywhere, and the location must still be the first maximum, the count exactly the
    positives."""
    from neuronindex.nets.summaries import summarize

    use_kernels(kernels, monkeypatch)

    rng = np.random.default_rng(sum(shape))
    a = rng.integers(-2, 3, size=shape).astype(np.float32)
    B, C, H, W = shape
    threshold = rng.choice(np.array([-np.inf, 0.0, 1.0, 2.0, 3.0], dtype=np.float32), size=C)
    acts = torch.from_numpy(a).contiguous(memory_format=LAYOUTS[layout])
    values, firing, loc, per_image, width = summarize(acts, torch.from_numpy(threshold))
    flat = a.reshape(B, C, H * W)
    np.testing.assert_array_equal(values.numpy(), flat.max(2))
    np.testing.assert_array_equal(firing.numpy(), (flat > 0).sum((0, 2)))
    first = flat.argmax(2)  # numpy's argmax is the first maximum
    np.testing.assert_array_equal(loc.numpy(), np.where(flat.max(2) >= threshold, first, -1))
    assert (per_image, width) == (H * W, W)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("top_k,curve_len,C", [(25, 25, 6), (10, 40, 6), (10, 40, 150)])
def test_top_lists_under_ties_and_unordered_ids(kernels, top_k, curve_len, C, monkeypatch):
    """Batches whose image ids come in any order (shards, resumed runs) and values with many ties
    keep exactly the records of a sort by (value desc, id asc), and the ranked values beyond
    them (150 channels: the native merge splits channels between threads in spans of 64)."""
    use_kernels(kernels, monkeypatch)
    rng = np.random.default_rng(7)
    n = 300
    vals = rng.integers(0, 6, size=(n, C)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n]
    st = LayerStats(C, top_k=top_k, curve_len=curve_len, n_classes=0, probe_size=0)
    for s in range(0, n, 37):
        acts = torch.from_numpy(vals[s:s + 37]).view(-1, C, 1, 1)
        st.add(acts, torch.from_numpy(ids[s:s + 37]))
    r = st.result()
    for c in range(C):
        order = sorted(range(n), key=lambda b: (-vals[b, c], ids[b]))[:top_k]
        np.testing.assert_array_equal(r.top_ids[c], ids[order])
        np.testing.assert_array_equal(r.top_values[c], vals[order, c])
        expected_curve = np.sort(vals[:, c])[::-1][:curve_len] / vals[:, c].max()
        np.testing.assert_allclose(r.curve[c], expected_curve, rtol=1e-6)


@pytest.mark.parametrize("kernels", KERNELS)
def test_extractor_summaries_equal_stats_on_the_maps(image_folder, tiny_loaded, kernels, monkeypatch):
    """The taps inside the graph (all layers written side by side into one summary) give the
    statistics of feeding each layer's returned map to its own LayerStats. The selected ReLUs
    are fused into their taps (rectified and summarised in one read): conv2, after relu1, shows
    that the rectified values flowing on are exact, relu2 that a tap with no users still runs."""
    if kernels != "torch":
        use_kernels(kernels, monkeypatch)
    images = open_source(str(image_folder))
    graph = trace(tiny_loaded)
    layers = [graph.lookup(name) for name in ("conv1", "relu1", "conv2", "relu2")]
    nodes, channels = [la.name for la in layers], [la.channels for la in layers]
    ext = Extractor(tiny_loaded, nodes)
    calls = tapped_calls(ext, channels)
    assert "relu1" not in calls and "relu2" not in calls and calls.count("conv1") == 1
    assert_taps_give_the_maps_statistics(ext, images, channels, kernels, lambda batch: ext(batch).values())


def tapped_calls(ext, channels) -> list[str]:
    """The modules the tapped graph calls, in order (the taps of nets.taps, as pass 1 puts them)."""
    from neuronindex.nets.summaries import Summaries
    from neuronindex.nets.taps import ReluSummaryTap, SummaryTap, tapped

    sink = Summaries(channels)
    graph = tapped(ext.loaded.module, ext.nodes, "cpu",
                   lambda i, relu, inplace: ReluSummaryTap(i, sink, inplace) if relu else SummaryTap(i, sink),
                   fuse_relu=True)
    return [str(n.target) for n in graph.graph.nodes if n.op == "call_module"]


def assert_taps_give_the_maps_statistics(ext, images, channels, kernels, maps_of):
    """Over all images, the taps' one shared summary gives exactly the statistics of feeding
    each layer's map (`maps_of(batch)`, in layer order) to its own LayerStats."""
    from neuronindex.science.stats import split

    both = LayerStats(sum(channels), top_k=K, curve_len=10, n_classes=0, probe_size=6)
    separate = [LayerStats(c, top_k=K, curve_len=10, n_classes=0, probe_size=6) for c in channels]
    for batch, pos, _ in image_batches(images, ext.loaded.preprocessing, 7):
        summary = ext.summaries(batch, both.threshold(), channels)
        if kernels == "torch":
            ext._sink.force = False  # the torch reductions used on other devices, from now on
        both.add_summary(summary, pos)
        for a, st in zip(maps_of(batch), separate):
            st.add(a, pos)
    for part, st in zip(split(both.result(), channels), separate):
        whole = st.result()
        for key in ("top_ids", "top_values", "top_y", "top_x", "sparsity", "probe", "act_mean", "dead"):
            np.testing.assert_array_equal(getattr(part, key), getattr(whole, key))


@pytest.mark.parametrize("kernels", ["native", "numba"])
def test_summaries_refuse_maps_and_thresholds_of_another_width(kernels, monkeypatch):
    """The compiled kernels write layer i's columns of one shared summary: a map or threshold of
    another width must be refused, not written over its neighbours' columns."""
    from neuronindex.nets.summaries import Summaries

    use_kernels(kernels, monkeypatch)
    sink = Summaries([4, 8])
    with pytest.raises(ValueError, match="10 channels where 12 were expected"):
        sink.begin(torch.zeros(10), 2)
    sink.begin(torch.zeros(12), 2)
    with pytest.raises(ValueError, match="layer 1 has 5 channels where 8 were expected"):
        sink.add(1, torch.ones(2, 5, 3, 3))
    sink.add(0, torch.ones(2, 4, 3, 3))
    sink.add(1, torch.ones(2, 8, 3, 3))
    values, firing, loc, per_image, width = sink.result()
    assert values.shape == (2, 12) and firing.tolist() == [18.0] * 12 and loc.tolist() == [[0] * 12] * 2


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS) + ["strided"])
@pytest.mark.parametrize("shape", [(3, 16, 32, 32), (2, 3, 7, 7), (2, 3, 17, 17), (2, 37, 5, 5), (2, 80, 3, 3),
                                   (3, 4, 1, 1)])
def test_fused_relu_equals_relu_then_summary(shape, layout, inplace, monkeypatch):
    """A tapped ReLU is rectified and summarised in one read (`Summaries.add_relu`): its output
    must be torch.relu's bit for bit (-0.0 and NaN included), the input untouched (or, in place,
    the input itself rectified), and the summary that of the rectified map."""
    from neuronindex.nets.summaries import Summaries

    use_kernels("native", monkeypatch)
    rng = np.random.default_rng(sum(shape))
    a = rng.choice(np.array([-2, -1, -0.0, 0, 1, 2, 3, np.nan], dtype=np.float32), size=shape)
    B, C, H, W = shape
    if layout == "strided":  # neither layout: the kernel reads a contiguous copy
        x = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 1, 3, 2))).transpose(2, 3)
    else:
        x = torch.from_numpy(a).contiguous(memory_format=LAYOUTS[layout])
    before = x.clone()
    threshold = torch.from_numpy(rng.choice(np.array([-np.inf, 0.0, 1.0, 2.0], dtype=np.float32), size=C))
    fused, plain = Summaries([C]), Summaries([C])
    fused.begin(threshold, B)
    plain.begin(threshold, B)
    expected = torch.relu(x)
    y = fused.add_relu(0, x, inplace)
    plain.add(0, expected)
    assert torch.equal(y.contiguous().view(torch.int32), expected.contiguous().view(torch.int32))
    if inplace:
        assert y is x
    else:
        assert torch.equal(x.contiguous().view(torch.int32), before.contiguous().view(torch.int32))
    for got, want in zip(fused.result(), plain.result()):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("kernels", KERNELS)
def test_taps_keep_the_models_in_place_semantics(image_folder, kernels, monkeypatch):
    """The tapped graph keeps the model's in-place ReLUs (no out-of-place copies), and the fused
    taps that replace them rectify in place too: the sum reads relu2's input again, rectified.
    Every layer's statistics equal those of the model's own forward."""
    from neuronindex.nets.models import Preprocessing, load_model

    if kernels != "torch":
        use_kernels(kernels, monkeypatch)
    loaded = load_model("python:tinymodels:inplace_cnn",
                        preprocessing=Preprocessing(input_size=(16, 16), geometry="resize", resize=None,
                                                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    names = ("relu1", "relu2", "conv3")
    graph = trace(loaded)
    layers = [graph.lookup(name) for name in names]
    nodes, channels = [la.name for la in layers], [la.channels for la in layers]
    ext = Extractor(loaded, nodes)
    calls = tapped_calls(ext, channels)
    assert "relu1" not in calls and "relu2" not in calls
    maps = {}
    for name in names:  # the model's own forward, each output copied the moment it is produced
        getattr(loaded.module, name).register_forward_hook(lambda m, i, out, name=name: maps.__setitem__(name, out.clone()))

    def model_maps(batch):
        with torch.inference_mode():
            loaded.module(loaded.preprocessing.normalize(batch))
        return [maps[name] for name in names]

    assert_taps_give_the_maps_statistics(ext, open_source(str(image_folder)), channels, kernels, model_maps)


def test_native_kernels_refuse_a_second_openmp_runtime(monkeypatch, capsys):
    """Two OpenMP runtimes in one process would run two thread pools on the same cores: the native
    kernels then stand aside for the numba ones, saying so once. Other packages' vendored
    runtimes (scikit-learn's libgomp-<hash>.so) do not count."""
    from neuronindex.nets import kernels

    torch_dir = "/site/torch"
    shared = ["/site/torch/lib/libgomp.so.1", "/site/sklearn/.libs/libgomp-a34b3233.so.1.0.0"]
    assert kernels.shares_torch_openmp(shared, torch_dir)
    assert kernels.shares_torch_openmp(["/usr/lib/x86_64-linux-gnu/libgomp.so.1"], torch_dir)  # torch uses the system's
    intel = ["/site/torch/lib/libiomp5.so", "/usr/lib/x86_64-linux-gnu/libgomp.so.1"]
    assert not kernels.shares_torch_openmp(intel, torch_dir)
    monkeypatch.setattr(kernels, "_native", False)
    monkeypatch.setattr(kernels, "openmp_runtimes", lambda: [p.replace("/site/torch", kernels.os.path.dirname(
        __import__("torch").__file__)) for p in intel])
    assert kernels.native() is None
    assert "second OpenMP runtime" in capsys.readouterr().err
    monkeypatch.setattr(kernels, "_native", False)
    monkeypatch.undo()
    assert (kernels.native() is None) == (not native_expected())


def test_gather_takes_each_points_vector_as_the_models_own_forward():
    """Extractor.gather (pass 2's re-forwards) takes the vector over the channels at given units by
    taps in the graph: on a model whose ReLUs run in place, each equals the output of the model's
    own forward copied the moment it was produced, and only the asked nodes come back."""
    from neuronindex.nets.models import Preprocessing, load_model

    loaded = load_model("python:tinymodels:inplace_cnn",
                        preprocessing=Preprocessing(input_size=(16, 16), geometry="resize", resize=None,
                                                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    names = ("conv1", "conv2", "relu2", "conv3")
    maps = {}
    for name in names:
        getattr(loaded.module, name).register_forward_hook(lambda m, i, out, name=name: maps.__setitem__(name, out.clone()))
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    with torch.inference_mode():
        loaded.module(loaded.preprocessing.normalize(batch))
    ext = Extractor(loaded, list(names))
    b, y, x = torch.tensor([0, 2, 2, 1]), torch.tensor([0, 15, 3, 7]), torch.tensor([5, 15, 3, 0])
    got = ext.gather(batch, {"conv2": (b, y, x), "relu2": (b[:2], y[:2], x[:2]), "conv3": (b, y, x)})
    assert set(got) == {"conv2", "relu2", "conv3"}
    torch.testing.assert_close(got["conv2"], maps["conv2"][b, :, y, x])  # before relu2 rectified it in place
    assert (maps["conv2"] < 0).any() and (got["conv2"] < 0).any()
    torch.testing.assert_close(got["relu2"], maps["relu2"][b[:2], :, y[:2], x[:2]])
    torch.testing.assert_close(got["conv3"], maps["conv3"][b, :, y, x])
    assert ext.gather(batch, {"conv1": (b, y, x)})["conv1"].shape == (4, 4)


def test_moments_are_chans_and_exact_where_sums_of_squares_cancel():
    """Activations of 1e8 + tiny noise: sum^2/n - mean^2 loses every digit of the variance in
    float64; Chan's update keeps it (numpy's two-pass variance as the reference), batch by batch,
    merged across states, and in LayerStats' act_std."""
    import torch

    from neuronindex.science.stats import Moments

    rng = np.random.default_rng(3)
    x = 1e8 + rng.normal(0, 1e-3, size=(90, 4))
    truth = x.var(0)
    naive = (x ** 2).sum(0) / len(x) - (x.sum(0) / len(x)) ** 2
    assert np.abs(naive - truth).max() > 100 * truth.max()  # the naive formula is far off here
    m, parts = Moments(4), [Moments(4), Moments(4)]
    for s in range(0, 90, 7):
        m.add(x[s:s + 7])
        parts[(s // 7) % 2].add(x[s:s + 7])
    parts[0].fold(parts[1].n, parts[1].mean, parts[1].m2)
    # float64 holds 1e8 to 1.5e-8: deviations of 1e-3 keep about 5 digits, the naive formula none
    np.testing.assert_allclose(m.variance(), truth, rtol=1e-4)
    np.testing.assert_allclose(parts[0].variance(), truth, rtol=1e-4)
    a = torch.from_numpy(x[:, :, None, None]).float()  # LayerStats' maps are float32 (1e8: step 8)
    whole, halves = LayerStats(4, top_k=3, curve_len=5), [LayerStats(4, top_k=3, curve_len=5) for _ in range(2)]
    ids = torch.arange(90)
    for s in range(0, 90, 10):
        whole.add(a[s:s + 10], ids[s:s + 10])
        halves[s // 50].add(a[s:s + 10], ids[s:s + 10])
    halves[0].merge(halves[1])
    f32 = a[:, :, 0, 0].double().numpy()
    np.testing.assert_allclose(whole.result().act_std, f32.std(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(halves[0].result().act_std, f32.std(0), rtol=1e-9, atol=1e-9)


def test_states_saved_with_sums_of_squares_load_as_moments():
    """A pass-1 state written before the moments were Chan's (sum, sumsq) resumes with the same mean and std."""
    import torch

    rng = np.random.default_rng(4)
    a = torch.from_numpy(rng.normal(2, 3, size=(40, 3, 2, 2)).astype(np.float32))
    st = LayerStats(3, top_k=4, curve_len=5)
    st.add(a, torch.arange(40))
    state = st.state_dict()
    v = a.amax(dim=(2, 3)).double().numpy()
    state.pop("mean"), state.pop("m2")
    state["sum"], state["sumsq"] = v.sum(0), (v * v).sum(0)
    old = LayerStats.from_state(state).result()
    np.testing.assert_allclose(old.act_mean, v.mean(0), rtol=1e-12)
    np.testing.assert_allclose(old.act_std, v.std(0), rtol=1e-9)
