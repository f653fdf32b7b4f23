"""Layer report: the numbers behind each figure, a self-contained HTML file, the summary command."""
from __future__ import annotations

import json

import numpy as np
import pytest

import neuronindex
from neuronindex import report
from neuronindex_cli.main import cli


@pytest.fixture(scope="module")
def index_dir(hierarchy_index):
    return hierarchy_index


@pytest.fixture(scope="module")
def idx(index_dir):
    with neuronindex.open(index_dir) as index:
        yield index


def test_summary_numbers(idx):
    rows = {r["layer"]: r for r in report.summary(idx)}
    assert set(rows) == {"conv1", "conv2"} and rows["conv1"]["neurons"] == 4 and rows["conv1"]["dead"] == 1
    alphas = [r["color_index"] for r in idx.sql("SELECT color_index FROM neuron_view WHERE layer = 'conv2'")]
    assert rows["conv2"]["mean_alpha"] == pytest.approx(np.mean(alphas))
    assert rows["conv2"]["colour_selective"] == pytest.approx(np.mean([a >= 0.4 for a in alphas if a is not None]))
    layer_sparsity = idx.sql("SELECT sparsity FROM layers WHERE name = 'conv1'")[0]["sparsity"]
    assert rows["conv1"]["sparsity"] == pytest.approx(layer_sparsity) and 0 <= layer_sparsity <= 1


def test_curves_pick_extremes_relative_to_the_network_max(idx):
    curves = report.figure_curves(idx, "tiny_cnn")
    aucs = {r["key"]: r["auc"] for r in idx.sql("SELECT key, auc FROM neuron_view WHERE NOT dead")}
    best = max(aucs.values())
    for layer, picks in curves.items():
        mine = [a for k, a in aucs.items() if f"/{layer}/" in k]
        assert picks[0]["auc"] == min(mine) and picks[-1]["auc"] == max(mine)
        assert all(p["auc_pct"] == pytest.approx(100 * p["auc"] / best) for p in picks)
        assert all(p["curve"][0] == pytest.approx(1.0) and len(p["curve"]) == 400 for p in picks)
    assert max(p["auc_pct"] for picks in curves.values() for p in picks) == pytest.approx(100)


def test_selectivity_bins(idx):
    bins = report.figure_selectivity_bins(idx, "tiny_cnn")
    assert bins["layers"] == ["conv1", "conv2"]
    for shares in bins["alpha"] + bins["gamma"]:
        assert sum(shares) == pytest.approx(1.0)
    alphas = [r["color_index"] for r in idx.sql("SELECT color_index FROM neuron_view WHERE layer = 'conv1' AND NOT dead "
                                                "AND color_index IS NOT NULL")]
    expected, _ = np.histogram(alphas, bins=report.ALPHA_BINS)
    assert bins["alpha"][0] == pytest.approx((expected / len(alphas)).tolist())


def test_hue_ring_self_response_variance_galleries(idx):
    hue = report.figure_hue(idx, "tiny_cnn")
    selective = [r["key"] for r in idx.sql("SELECT key FROM neuron_view WHERE color_index >= 0.4 AND layer = 'conv1'")]
    assert selective and all(any(h["key"] == k and h["ring"] == 1 for h in hue) for k in selective)
    assert all(h["color_index"] >= 0.4 and 0 <= h["hue"] < 360 for h in hue)
    sr = report.figure_per_layer(idx, "tiny_cnn", "nf_self_response")
    assert len(sr["conv1"]) == 3  # the dead neuron has none
    var = report.figure_variance(idx, "tiny_cnn")
    assert all(sum(v) == pytest.approx(1.0) and v == sorted(v, reverse=True) for v in var.values())
    g = report.galleries(idx, "tiny_cnn")
    # the red detector's NF is flat red (alpha undefined, NULL): the gallery starts at the highest alpha
    top = idx.sql("SELECT key FROM neuron_view WHERE layer = 'conv1' AND color_index IS NOT NULL "
                  "ORDER BY color_index DESC LIMIT 1").rows()[0]["key"]
    assert g["by_alpha"][0]["key"] == top != "tiny_cnn/conv1/0"
    assert [r["class_index"] for r in g["across_gamma"]] == sorted(r["class_index"] for r in g["across_gamma"])
    assert any(tag[0] in ("warm", "cool") for r in g["across_gamma"] for tag in r["ontology_tags"])


def test_report_html_is_self_contained(index_dir, cli_runner, tmp_path):
    out = tmp_path / "report.html"
    r = cli_runner.invoke(cli, ["report", str(index_dir), "-o", str(out), "--png-dir", str(tmp_path / "figs")])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script src" not in page
    assert page.count("data:image/png;base64,") >= 10
    figs = {p.name for p in (tmp_path / "figs").glob("*.png")}
    assert len(figs) == 9  # seven per-layer figures, then the category hierarchy ingest built and its tree
    assert {"tiny_cnn-category_hierarchy.png", "tiny_cnn-class_tree.png"} <= figs
    for fmt in ("table", "csv", "json", "jsonl"):
        r = cli_runner.invoke(cli, ["summary", str(index_dir), "--format", fmt])
        assert r.exit_code == 0 and "conv2" in r.output
    assert len(json.loads(cli_runner.invoke(cli, ["summary", str(index_dir), "--format", "json"]).output)) == 2
    r = cli_runner.invoke(cli, ["report", str(index_dir), "--model", "nope", "-o", str(out)])
    assert r.exit_code == 3 and "no model 'nope'" in r.output
