"""Layer report: Rafegas et al. 2020's figures (and Zhang's and Yu et al.'s) from an index.

Each `figure_*` function returns the numbers behind one plot (tested directly); `render` draws
them with matplotlib and embeds the PNGs in one self-contained HTML file.

  fig. 1 (004)    ranked normalised activation curves: per layer, the neurons with the highest,
                  lowest and quartile AUC; AUC as % of the network's largest
  figs. 8-9 (004) share of neurons per colour-index bin and per class-index bin, per layer
  fig. 7 (004)    colour-selective neurons (alpha >= 0.4) placed by hue angle, a ring per layer
  fig. 4 (004)    NF self-response per layer
  fig. 6 (002)    sparsity per layer;  Zhang (CS231n): per-layer variance ranking of neurons (probe)
  Zhang (CS231n)        per layer with directions: the singular-value spectrum, top and bottom image rows
                  of the leading SVD directions, and redundancy: how much the top (and bottom)
                  image sets of the highest-variance neurons overlap each other, against those of
                  the SVD and random directions
  galleries       conv1 NFs by colour index (004 fig. 5); neurons across the class-index range with
                  their class tag clouds, leaves and ontology (004 fig. 10); high on both (fig. 11)
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from neuronindex.errors import NotFoundError, UsageError, did_you_mean
from neuronindex.formats import to_table
from neuronindex.query import categories
from neuronindex.query.units import pair_overlaps
from neuronindex.science.selectivity import COLOR_THRESHOLD

ALPHA_BINS = [0.0, 0.1, 0.25, 0.4, 0.6, 1.0001]
GAMMA_BINS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0001]


def _models(idx, model):
    names = [m["name"] for m in idx.models().rows()]
    if model is not None:

        if model not in names:
            raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, names)}")
        return [model]
    return names


def summary(idx, model: str | None = None) -> list[dict]:
    """Per layer (see Index.summary); an unknown model is an error."""
    _models(idx, model)
    return idx.summary(model).rows()


def figure_curves(idx, model: str) -> dict:
    """Fig. 1: per layer, curves of the max / min / quartile-AUC neurons, AUC in % of the network max."""
    rows = idx.query("SELECT v.layer, v.key, v.auc, c.curve FROM neuron_view v JOIN curves c ON c.neuron_id = v.id AND v.kind = 'channel' "
                   "WHERE v.model = ? AND NOT v.dead ORDER BY v.id", [model]).rows()
    top = max((r["auc"] for r in rows), default=0) or 1.0
    out = {}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["auc"])
        picks = sorted({0, len(mine) // 4, len(mine) // 2, (3 * len(mine)) // 4, len(mine) - 1})
        out[layer] = [{"key": mine[i]["key"], "auc": mine[i]["auc"], "auc_pct": 100 * mine[i]["auc"] / top,
                       "curve": list(mine[i]["curve"])} for i in picks]
    return out


def _bins(values, edges) -> list[float]:
    values = np.array([v for v in values if v is not None], dtype=float)
    if len(values) == 0:
        return [0.0] * (len(edges) - 1)
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=edges)
    return (counts / len(values)).tolist()


def figure_selectivity_bins(idx, model: str) -> dict:
    """Figs. 8-9: per layer, the share of neurons in each colour-index and class-index bin."""
    rows = idx.query("SELECT layer, color_index, class_index FROM neuron_view WHERE model = ? AND kind = 'channel' AND NOT dead ORDER BY id",
                   [model]).rows()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    return {"layers": layers, "alpha_edges": ALPHA_BINS, "gamma_edges": GAMMA_BINS,
            "alpha": [_bins([r["color_index"] for r in rows if r["layer"] == l], ALPHA_BINS) for l in layers],
            "gamma": [_bins([r["class_index"] for r in rows if r["layer"] == l], GAMMA_BINS) for l in layers]}


def figure_hue(idx, model: str) -> list[dict]:
    """Fig. 7: colour-selective neurons with their hue angle and ring (layer order)."""
    layers = [l["name"] for l in idx.layers(model).rows()]
    rows = idx.query("SELECT key, layer, hue, color_index FROM neuron_view WHERE model = ? AND kind = 'channel' AND color_index >= ? "
                   "AND hue IS NOT NULL ORDER BY id", [model, COLOR_THRESHOLD]).rows()
    return [{**r, "ring": layers.index(r["layer"]) + 1} for r in rows]


def figure_per_layer(idx, model: str, column: str) -> dict:
    """Values of one per-neuron column, per layer (fig. 4: nf_self_response; fig. 6: sparsity)."""
    rows = idx.query(f"SELECT layer, {column} AS value FROM neuron_view WHERE model = ? AND kind = 'channel' AND NOT dead "
                   f"AND {column} IS NOT NULL ORDER BY id", [model]).rows()
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["layer"], []).append(float(r["value"]))
    return out


def figure_variance(idx, model: str) -> dict:
    """Zhang (CS231n): per layer, neurons' activation variance on the probe sample, ranked, as a share of the total."""
    rows = idx.query("SELECT v.layer, p.activations FROM neuron_view v JOIN probe p ON p.neuron_id = v.id AND v.kind = 'channel' "
                   "WHERE v.model = ? ORDER BY v.id", [model]).rows()
    out = {}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        var = np.sort(np.array([np.var(r["activations"]) for r in rows if r["layer"] == layer]))[::-1]
        out[layer] = (var / var.sum()).tolist() if var.sum() > 0 else var.tolist()
    return out


def galleries(idx, model: str, n: int = 12) -> dict:
    first = idx.layers(model).rows()[0]["name"]
    by_alpha = idx.query("SELECT key, color_index FROM neuron_view WHERE model = ? AND kind = 'channel' AND layer = ? AND NOT dead "
                       "AND color_index IS NOT NULL ORDER BY color_index DESC, id", [model, first]).rows()
    gamma = idx.query("SELECT key, class_index, class_m FROM neuron_view WHERE model = ? AND kind = 'channel' AND class_index IS NOT NULL "
                    "AND NOT dead ORDER BY class_index, class_m DESC, id", [model]).rows()
    picks = [gamma[int(i)] for i in np.linspace(0, len(gamma) - 1, min(n, len(gamma)))] if gamma else []
    for p in picks:
        tags = idx.query("SELECT c.name, nc.share, nc.is_leaf FROM neuron_classes nc JOIN classes c ON c.id = nc.class_id "
                       "JOIN neurons n ON n.id = nc.neuron_id WHERE n.key = ? ORDER BY nc.share DESC", [p["key"]]).rows()
        p["leaf_tags"] = [(t["name"], t["share"]) for t in tags if t["is_leaf"]][:8]
        p["ontology_tags"] = [(t["name"], t["share"]) for t in tags if not t["is_leaf"]][:8]
    both = idx.query("SELECT key, color_index, class_index, top_class FROM neuron_view WHERE model = ? AND kind = 'channel' AND NOT dead "
                   "AND color_index >= ? ORDER BY color_index * class_index DESC, id LIMIT ?", [model, COLOR_THRESHOLD, n]).rows()
    return {"first_layer": first, "by_alpha": by_alpha, "across_gamma": picks, "both": both}


# ---------------------------------------------------------------------------- rendering

def figure_spectrum(idx, model: str) -> dict:
    """Zhang (CS231n), fig. 5: per layer with directions, its singular values (descending) and how many
    SVD directions were kept."""
    rows = idx.query("SELECT l.name, l.spectrum, (SELECT count(*) FROM directions d WHERE d.layer_id = l.id "
                     "AND d.kind = 'svd') AS kept FROM layers l JOIN models m ON m.id = l.model_id "
                     "WHERE m.name = ? AND l.spectrum IS NOT NULL ORDER BY l.position", [model]).rows()
    return {r["name"]: {"singular_values": list(r["spectrum"]), "kept": int(r["kept"])} for r in rows}


def _jaccard_pairs(sets: list[set]) -> dict:
    scores = pair_overlaps(sets)
    return {"units": len(sets), "mean_overlap": float(np.mean(scores)) if scores else None,
            "pairs_over_half": int(sum(s >= 0.5 for s in scores)), "pairs": len(scores)}


def figure_redundancy(idx, model: str, units: int = 8, k: int = 20) -> dict:
    """Zhang (CS231n)'s redundancy finding, measured: per layer with directions, the mean pairwise
    Jaccard overlap of the top-k (and bottom-k) image sets of its `units` highest-variance
    neurons (Zhang (CS231n)'s naive method: variance of the per-image activation), of its SVD
    directions and of its random directions, and how many pairs share at least half their images."""
    layers = idx.query("SELECT DISTINCT l.id, l.name, l.position FROM directions d JOIN layers l ON l.id = d.layer_id "
                       "JOIN models m ON m.id = l.model_id WHERE m.name = ? ORDER BY l.position", [model]).rows()
    out = {}
    for layer in layers:
        groups = {
            "neurons": idx.query("SELECT id FROM neurons WHERE layer_id = ? AND kind = 'channel' AND NOT dead "
                                 "ORDER BY act_std DESC NULLS LAST, id LIMIT ?",
                                 [layer["id"], units]).rows(),
            **{kind: idx.query("SELECT n.id FROM neurons n JOIN directions d ON d.neuron_id = n.id WHERE n.layer_id = ? "
                               "AND d.kind = ? ORDER BY d.ordinal LIMIT ?", [layer["id"], kind, units]).rows()
               for kind in ("svd", "random", "nmf", "sae")},
        }
        entry = {}
        for name, rows in groups.items():
            if not rows:
                continue
            ids = [r["id"] for r in rows]
            sets = {}
            for table in ("topk", "bottomk"):
                got = idx.query(f"SELECT neuron_id, list(image_id) AS images FROM {table} WHERE neuron_id IN "
                                f"(SELECT unnest(?)) AND rank <= ? GROUP BY neuron_id", [ids, k]).rows()
                sets[table] = [set(r["images"]) for r in got]
            entry[name] = {"top": _jaccard_pairs(sets["topk"]), "bottom": _jaccard_pairs(sets["bottomk"])}
        out[layer["name"]] = entry
    return out


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def render_figures(idx, model: str) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, bytes] = {}
    curves = figure_curves(idx, model)
    cols = min(4, max(1, len(curves)))
    rows_ = (len(curves) + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(3.2 * cols, 2.4 * rows_), squeeze=False)
    for ax, (layer, picks) in zip(axes.ravel(), curves.items()):
        for p in picks:
            ax.plot(range(1, len(p["curve"]) + 1), p["curve"], label=f"{p['auc_pct']:.0f}%")
        ax.set_title(layer, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(curves):]:
        ax.axis("off")
    fig.suptitle("Ranked normalised activations, ranks 1-400 (AUC % of the network's largest)", fontsize=10)
    fig.tight_layout()
    figs["fig1_curves"] = _png(fig)

    bins = figure_selectivity_bins(idx, model)
    for key, title, cmap in (("alpha", "Colour selectivity index per layer", "Reds"),
                             ("gamma", "Class selectivity index per layer", "Blues")):
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(bins["layers"]) + 2), 3))
        bottom = np.zeros(len(bins["layers"]))
        shares = np.array(bins[key]) if bins[key] else np.zeros((0, 5))
        edges = bins[f"{key}_edges"]
        colours = [plt.get_cmap("Greys")(0.35)] + [plt.get_cmap(cmap)(v) for v in np.linspace(0.3, 0.9, len(edges) - 2)]
        for b in range(len(edges) - 1):
            vals = shares[:, b] if len(shares) else bottom
            ax.bar(bins["layers"], vals, bottom=bottom, color=colours[b], label=f"{edges[b]:.2g}-{min(edges[b + 1], 1):.2g}")
            bottom = bottom + vals
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.legend(fontsize=6, bbox_to_anchor=(1, 1))
        figs[f"fig{'8' if key == 'alpha' else '9'}_{key}_bins"] = _png(fig)

    hue = figure_hue(idx, model)
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="polar")
    for h in hue:
        ax.scatter(np.radians(h["hue"]), h["ring"], s=30 + 60 * h["color_index"],
                   color=plt.get_cmap("hsv")((h["hue"] % 360) / 360))
    ax.set_title("Colour-selective neurons by hue (ring = layer)", fontsize=10)
    figs["fig7_hue"] = _png(fig)

    for name, column, title in (("fig4_self_response", "nf_self_response", "NF self-response per layer"),
                                ("fig6_sparsity", "sparsity", "Sparsity per layer")):
        data = figure_per_layer(idx, model, column)
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(data) + 2), 3))
        if data:
            ax.boxplot(list(data.values()), tick_labels=list(data.keys()))
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        figs[name] = _png(fig)

    var = figure_variance(idx, model)
    fig, ax = plt.subplots(figsize=(5, 3))
    for layer, v in var.items():
        ax.plot(range(1, len(v) + 1), v, label=layer)
    ax.set_xscale("log")
    ax.set_title("Share of activation variance by neuron rank (probe)", fontsize=10)
    ax.legend(fontsize=5, ncol=2)
    figs["variance_by_rank"] = _png(fig)

    spectrum = figure_spectrum(idx, model)
    if spectrum:
        fig, ax = plt.subplots(figsize=(5, 3))
        for layer, s in spectrum.items():
            sv = s["singular_values"][:15]
            line, = ax.plot(range(1, len(sv) + 1), sv, marker=".", label=f"{layer} ({s['kept']} kept)")
            if s["kept"]:
                ax.plot(range(1, s["kept"] + 1), sv[: s["kept"]], "o", color=line.get_color(), fillstyle="none")
        ax.set_xlabel("rank", fontsize=8)
        ax.set_ylabel("singular value", fontsize=8)
        ax.set_title("Singular values of each layer's standardised image x channel matrix",
                     fontsize=9)
        ax.legend(fontsize=5, ncol=2)
        figs["svd_spectrum"] = _png(fig)

    detectors = figure_detectors(idx, model)
    if detectors:
        fig, axes = plt.subplots(1, len(detectors), figsize=(5.5 * len(detectors), 3.2), squeeze=False)
        for ax, (source, d) in zip(axes[0], detectors.items()):
            x = np.arange(len(d["layers"]))
            width = 0.8 / max(1, len(d["categories"]))
            for i, (category, counts) in enumerate(d["categories"].items()):
                ax.bar(x + (i - (len(d["categories"]) - 1) / 2) * width, counts, width, label=category)
            ax.set_xticks(x, d["layers"], rotation=60, fontsize=7)
            ax.set_ylabel("unique detectors", fontsize=8)
            ax.set_title(f"concepts: {source.rstrip('/').rsplit('/', 1)[-1]}", fontsize=9)
            ax.legend(fontsize=6, loc="upper left")
            share = ax.twinx()
            share.plot(x, d["interpretable"], "k.-", label="interpretable share")
            share.set_ylim(0, 1.02)
            share.set_ylabel("share of units interpretable", fontsize=8)
        fig.tight_layout()
        figs["dissection_detectors"] = _png(fig)
    return figs


def figure_detectors(idx, model: str) -> dict:
    """Per concept set: layers in depth order, unique detectors per category per layer, and the
    share of each layer's units that a concept labels (Network Dissection)."""
    out: dict = {}
    for d in idx.dissections(model).rows():
        entry = out.setdefault(d["source"], {"layers": [], "interpretable": [], "rows": {}})
        entry["layers"].append(d["layer"])
        entry["interpretable"].append(d["interpretable"] / d["units"] if d["units"] else 0.0)
    for r in idx.detectors(model).rows():
        out[r["source"]]["rows"][(r["layer"], r["category"])] = r["unique_detectors"]
    for entry in out.values():
        cats = sorted({c for _, c in entry["rows"]})
        entry["categories"] = {c: [entry["rows"].get((layer, c), 0) for layer in entry["layers"]] for c in cats}
        del entry["rows"]
    return out


def _img(png: bytes | None, width: int = 56) -> str:
    if not png:
        return ""
    return (f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" width="{width}" '
            f'style="image-rendering:pixelated">')


def _directions_section(idx, model: str, leading: int = 4, images: int = 8) -> list[str]:
    """Zhang (CS231n), fig. 6: top and bottom image rows of each layer's leading SVD directions, and the
    redundancy table."""
    red = figure_redundancy(idx, model)
    if not red:
        return []
    parts = [f"<h3>Directions ({html.escape(ZHANG)}): leading SVD directions, top row = highest, bottom row = lowest</h3>"]
    for layer in red:
        rows = idx.query("SELECT n.key, d.singular_value, d.explained FROM directions d JOIN neurons n "
                         "ON n.id = d.neuron_id JOIN layers l ON l.id = d.layer_id JOIN models m ON m.id = l.model_id "
                         "WHERE m.name = ? AND l.name = ? AND d.kind = 'svd' ORDER BY d.ordinal LIMIT ?",
                         [model, layer, leading]).rows()
        for r in rows:
            n = idx.neuron(r["key"])
            line = [f"<div><b>{html.escape(r['key'])}</b> sv {r['singular_value']:.1f} "
                    f"({100 * (r['explained'] or 0):.1f}%)<br>"]
            for side, listing in (("top", n.topk().rows()), ("bottom", n.bottomk().rows())):
                for t in listing[:images]:
                    try:
                        buf = io.BytesIO()
                        n.crop(t["rank"], side).resize((40, 40)).save(buf, "PNG")
                        line.append(_img(buf.getvalue(), 40))
                    except (OSError, ValueError):  # the image is gone: the table still stands
                        line.append("<span style='display:inline-block;width:40px'>?</span>")
                line.append("<br>")
            parts.append("".join(line) + "</div>")
    parts.append(f"<h3>Redundancy ({html.escape(ZHANG)}): mean pairwise overlap (Jaccard) of top-20 / bottom-20 image sets, "
                 "pairs sharing at least half</h3><table><tr><th>layer</th><th>units</th><th>top overlap</th>"
                 "<th>top pairs &ge; 0.5</th><th>bottom overlap</th><th>bottom pairs &ge; 0.5</th></tr>")
    for layer, entry in red.items():
        for name, v in entry.items():
            t, b = v["top"], v["bottom"]
            fmt = (lambda x: "" if x is None else f"{x:.3f}")
            parts.append(f"<tr><td>{html.escape(layer)}</td><td>{name} ({t['units']})</td><td>{fmt(t['mean_overlap'])}</td>"
                         f"<td>{t['pairs_over_half']}/{t['pairs']}</td><td>{fmt(b['mean_overlap'])}</td>"
                         f"<td>{b['pairs_over_half']}/{b['pairs']}</td></tr>")
    parts.append("</table>")
    return parts


def _dictionaries_section(idx, model: str) -> list[str]:
    """Neurons vs SVD directions vs learned atoms per layer (`Index.dictionaries`), as a table."""
    rows = idx.dictionaries(model).rows()
    if not rows:
        return []
    fmt = (lambda x, d=3: "" if x is None else f"{x:.{d}f}")
    parts = ["<h3>Neurons, SVD directions and learned atoms (NMF as in CRAFT, Fel et al. 2023; a sparse autoencoder): "
             "class purity, colour, redundancy (top-20 overlap) and R&sup2; for the same number of units</h3>"
             "<table><tr><th>layer</th><th>kind</th><th>units</th><th>top-class share</th><th>class index</th>"
             "<th>colour index</th><th>redundancy</th><th>R&sup2;</th><th>active atoms</th></tr>"]
    for r in rows:
        parts.append(f"<tr><td>{html.escape(r['layer'])}</td><td>{'neurons' if r['kind'] == 'channel' else r['kind']}</td>"
                     f"<td>{r['units']}</td><td>{fmt(r['top_class_share'])}</td><td>{fmt(r['class_index'])}</td>"
                     f"<td>{fmt(r['color_index'])}</td><td>{fmt(r['redundancy'])}</td><td>{fmt(r['r2'])}</td>"
                     f"<td>{fmt(r['l0'], 1)}</td></tr>")
    parts.append("</table>")
    return parts


RAFEGAS = "Rafegas et al., \u201cUnderstanding trained CNNs by indexing neuron selectivity\u201d"
ZHANG = "Zhang, \u201cVisualizing neuron role with dimensionality reduction of feature space\u201d"
YU = "Yu et al., \u201cVisualizing and comparing convolutional neural networks\u201d"
# what a reader sees for each figure of render_figures (its key stays the file name and URL)
FIGURE_TITLES = {
    "fig8_alpha_bins": f"How colour selective each layer is (colour index; {RAFEGAS}, Fig. 8)",
    "fig9_gamma_bins": f"How class selective each layer is (class index; {RAFEGAS}, Fig. 9)",
    "fig7_hue": f"Colour-selective neurons by hue, a ring per layer ({RAFEGAS}, Fig. 7)",
    "fig4_self_response": f"How strongly each neuron responds to its own Neuron Feature ({RAFEGAS}, Fig. 4)",
    "fig6_sparsity": f"Sparsity per layer: share of map positions not firing ({YU}, Fig. 6)",
    "fig1_curves": f"Ranked activation curves per layer ({RAFEGAS}, Fig. 1)",
    "variance_by_rank": f"Share of a layer's activation variance by neuron rank ({ZHANG})",
    "svd_spectrum": f"Singular values of each layer's image x channel matrix ({ZHANG}, Fig. 5)",
    "dissection_detectors": "Unique detectors per concept category and the share of interpretable units, by "
                            "layer (Network Dissection, Bau et al. 2017)",
}


def figure_names(idx, model: str) -> list[str]:
    """The figures render_figures makes for a model, known without drawing any (a request for
    another name is answered before anything is rendered)."""
    optional = {"svd_spectrum": bool(figure_spectrum(idx, model)), "dissection_detectors": bool(figure_detectors(idx, model))}
    return [n for n in FIGURE_TITLES if n not in optional] + [n for n, present in optional.items() if present]


def figure_title(name: str) -> str:
    return FIGURE_TITLES.get(name, name.replace("_", " "))


def render(idx, path: str | Path, model: str | None = None, png_dir: str | Path | None = None) -> list[str]:
    """Write the report (one HTML file, images inline); optionally every figure as a PNG."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>neuronindex report</title><style>"
             "body{font-family:system-ui,sans-serif;margin:2em;color:#222} table{border-collapse:collapse} "
             "td,th{padding:3px 8px;border-bottom:1px solid #ddd;font-size:12px} .g{display:inline-block;margin:4px;"
             "font-size:10px;width:120px;vertical-align:top}</style></head><body><h1>neuronindex report</h1>"]
    written = []
    for m in _models(idx, model):
        parts.append(f"<h2>{html.escape(m)}</h2><h3>Summary per layer</h3><pre>{html.escape(to_table(summary(idx, m)))}</pre>")
        for name, png in render_figures(idx, m).items():
            parts.append(f"<h3>{html.escape(figure_title(name))}</h3><img src='data:image/png;base64,"
                         f"{base64.b64encode(png).decode()}' alt='{html.escape(figure_title(name))}'>")
            if png_dir is not None:
                Path(png_dir).mkdir(parents=True, exist_ok=True)
                out = Path(png_dir) / f"{m}-{name}.png"
                out.write_bytes(png)
                written.append(str(out))
        parts += _directions_section(idx, m)
        parts += _dictionaries_section(idx, m)
        for name, png, text in _hierarchy_and_maps(idx, m):
            parts.append(f"<h3>{html.escape(name)}</h3><p>{html.escape(text)}</p>"
                         f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
            if png_dir is not None:
                Path(png_dir).mkdir(parents=True, exist_ok=True)
                out = Path(png_dir) / f"{m}-{name.split(':')[0].replace(' ', '_')}.png"
                out.write_bytes(png)
                written.append(str(out))
        g = galleries(idx, m)
        parts.append(f"<h3>{html.escape(g['first_layer'])}: Neuron Features ordered by colour index ({html.escape(RAFEGAS)}, Fig. 5)</h3>")
        parts += [f"<div class=g>{_img(idx.nf_png(r['key']))}<br>{r['color_index']:.2f}</div>" for r in g["by_alpha"]]
        parts.append(f"<h3>Neurons across the class-index range, with the classes of their top images ({html.escape(RAFEGAS)}, Fig. 10)</h3>")
        for r in g["across_gamma"]:
            leaf = " ".join(f"<span style='font-size:{8 + 14 * s:.0f}px'>{html.escape(n)}</span>" for n, s in r["leaf_tags"])
            onto = " ".join(f"<span style='font-size:{8 + 14 * s:.0f}px'>{html.escape(n)}</span>" for n, s in r["ontology_tags"])
            parts.append(f"<div class=g>{_img(idx.nf_png(r['key']))}<br>{html.escape(r['key'])}<br>gamma "
                         f"{r['class_index']:.3f}<br>{leaf}<br><i>{onto}</i></div>")
        parts.append(f"<h3>Neurons selective to both colour and class ({html.escape(RAFEGAS)}, Fig. 11)</h3>")
        parts += [f"<div class=g>{_img(idx.nf_png(r['key']))}<br>{html.escape(r['key'])}<br>alpha {r['color_index']:.2f} "
                  f"gamma {r['class_index']:.3f}<br>{html.escape(r['top_class'] or '')}</div>" for r in g["both"]]
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts))
    return written


# ---------------------------------------------------------------- Dai 2020 hierarchy, Yu et al. 2014 maps
SWATCH = {"black": "#222222", "white": "#dddddd", "grey": "#8c8c8c", "red": "#d62728", "orange": "#ff7f0e",
          "yellow": "#e6c700", "green": "#2ca02c", "blue": "#1f77b4", "purple": "#9467bd", "pink": "#e377c2",
          "brown": "#8c564b"}
TRUNCATE = 150  # classes above which a dendrogram shows its last 80 merges (counts at the leaves)


def linkage_of(nodes: list[dict]) -> tuple[np.ndarray, list[str]]:
    """scipy's linkage matrix and leaf labels back from stored hierarchy nodes (children ordered as
    the stored dendrogram order, so the drawing matches `leaf_order`)."""
    leaves = [r for r in nodes if r["class"] is not None]
    n = len(leaves)
    first = {r["node"]: r["leaf_order"] for r in leaves}
    children: dict[int, list[int]] = {}
    for r in sorted(nodes, key=lambda r: r["node"]):
        if r["parent"] is not None:
            children.setdefault(r["parent"], []).append(r["node"])
    z = np.zeros((n - 1, 4))
    for r in sorted(nodes, key=lambda r: r["node"]):
        if r["node"] >= n:
            a, b = sorted(children[r["node"]], key=lambda c: first[c])
            first[r["node"]] = first[a]
            z[r["node"] - n] = [a, b, r["height"], r["size"]]
    labels = [r["class"] for r in sorted(leaves, key=lambda r: r["node"])]
    return z, labels


def class_distance_matrix(idx, h_id: int, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(category distances, minimum-spanning-tree edges as a bool matrix) of a stored hierarchy, in
    the order of `names`."""
    where = {c: i for i, c in enumerate(names)}
    d = np.zeros((len(names), len(names)))
    mst = np.zeros((len(names), len(names)), dtype=bool)
    for a, b, v, edge in idx.con.execute(
            "SELECT a.name, b.name, d.distance, d.in_mst FROM class_distances d JOIN classes a ON a.id = d.class_a "
            "JOIN classes b ON b.id = d.class_b WHERE d.hierarchy_id = ?", [h_id]).fetchall():
        d[where[a], where[b]] = v
        mst[where[a], where[b]] = edge
    return d, mst


def _hierarchy_and_maps(idx, model: str) -> list[tuple[str, bytes, str]]:
    """(title, PNG, caption) of the model's stored category hierarchy and representation maps."""
    out = []
    try:
        h = categories.stored(idx.con, model)
    except NotFoundError:
        h = None
    if h is not None:
        figs = hierarchy_pngs(idx, model, h["layer"], h["pooling"])
        text = (f"Each class is the mean feature vector of its images at {h['layer']}; the closest classes merge "
                f"first (Wang et al., Towards interpretable deep networks, Algorithm 1). Tree centre: {h['centre']}; "
                f"hub: {h['hub']}.")
        if h["wordnet_correlation"] is not None:
            text += (f" Agreement with WordNet: Spearman {h['wordnet_correlation']:.3f} (shuffled labels "
                     f"{h['wordnet_baseline']:.3f}); siblings merge lower with probability "
                     f"{h['wordnet_sibling_auc']:.3f}.")
        out.append(("category hierarchy: how the network groups its classes", figs["dendrogram"], text))
        out.append(("class tree: minimum spanning tree of the classes", figs["mst"],
                    "Edges of the minimum spanning tree of the class distances, classes placed by multidimensional "
                    "scaling of those distances."))
    stored = idx.query("SELECT l.name AS layer, p.space FROM maps p JOIN layers l ON l.id = p.layer_id JOIN models m "
                       "ON m.id = p.model_id WHERE m.name = ? ORDER BY l.position, p.space", [model]).rows()
    for layer, space in ((r["layer"], r["space"]) for r in stored):
        what = "neurons by their prototype embedding, bordered by colour name" if space == "neurons" else \
            "top crops by their patch embedding, coloured by image class"
        out.append((f"map of {layer} {space}: similar ones together", map_png(idx, model, layer, space,
                                                                               "colour" if space == "neurons" else "class"),
                    f"A 2-D layout of {layer}'s {what} (an activation-atlas-like map)."))
    return out


def classical_mds(d: np.ndarray) -> np.ndarray:
    """2-D positions whose distances approximate d (Torgerson: the top eigenvectors of the double-
    centred squared distances); deterministic up to sign, which is fixed."""
    n = len(d)
    j = np.eye(n) - 1.0 / n
    b = -0.5 * j @ (d ** 2) @ j
    w, v = np.linalg.eigh(b)
    top = np.argsort(w)[::-1][:2]
    xy = v[:, top] * np.sqrt(np.maximum(w[top], 0))
    xy *= np.where(xy[np.abs(xy).argmax(0), [0, 1]] < 0, -1, 1) if n else 1
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def hierarchy_pngs(idx, model: str | None = None, layer: str | None = None,
                   pooling: str | None = None) -> dict[str, bytes]:
    """The stored category hierarchy drawn: {'dendrogram': PNG, 'mst': PNG} (Dai 2020, fig. 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    h = categories.stored(idx.con, model, layer, pooling)
    z, labels = linkage_of(categories.nodes_of(idx.con, h))
    n = len(labels)
    title = f"{h['model']} {h['layer']} ({h['pooling']} pooling): {n} classes"
    tall = min(n, TRUNCATE if n <= TRUNCATE else 80)
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.16 * tall)))
    if n <= TRUNCATE:
        dendrogram(z, labels=labels, orientation="left", ax=ax, leaf_font_size=7, color_threshold=0,
                   above_threshold_color="#444")
    else:
        dendrogram(z, truncate_mode="lastp", p=80, orientation="left", ax=ax, leaf_font_size=7, color_threshold=0,
                   above_threshold_color="#444", show_contracted=True)
        title += " (last 80 merges; leaves: class counts)"
    ax.set_xlabel("merge height (cosine distance)", fontsize=8)
    ax.set_title("Category hierarchy: " + title, fontsize=9)
    out = {"dendrogram": _png(fig)}
    d, mst = class_distance_matrix(idx, h["id"], labels)
    xy = classical_mds(d)
    edges = list(zip(*np.nonzero(np.triu(mst))))
    degree = mst.sum(1)
    size = 10 if n > 60 else 22
    fig, ax = plt.subplots(figsize=(7, 6))
    for a, b in edges:
        ax.plot(*xy[[a, b]].T, color="#999", lw=0.8, zorder=1)
    ax.scatter(*xy.T, s=size * (1 + degree), c=degree, cmap="viridis", zorder=2, edgecolors="white", linewidths=0.5)
    shown = range(n) if n <= 60 else [i for i in range(n) if degree[i] >= 4 or labels[i] in (h["centre"], h["hub"])]
    for i in shown:
        bold = labels[i] in (h["centre"], h["hub"])
        ax.annotate(labels[i], xy[i], fontsize=8 if bold else 6, weight="bold" if bold else "normal",
                    xytext=(3, 3), textcoords="offset points", color="#b00" if bold else "#222")
    ax.set_title(f"Minimum spanning tree of the {n} classes ({h['layer']}); centre {h['centre']}, hub {h['hub']}\n"
                 "placed by multidimensional scaling of the category distances; size and colour: edges", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    out["mst"] = _png(fig)
    return out


def map_png(idx, model: str, layer: str, space: str = "neurons", color: str = "colour") -> bytes:
    """A stored representation map drawn: points coloured by colour name or (top / image) class; the
    neurons map also places every Neuron Feature as a thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = idx.map(layer, space, model)
    rows = m.rows()
    xy = np.array([[r["x"], 1 - r["y"]] for r in rows]) if rows else np.zeros((0, 2))
    colours, legend = point_colours(rows, space, color)
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.scatter(*xy.T, s=4 if len(rows) > 2000 else 14, c=colours, linewidths=0)
    if space == "neurons" and len(rows) <= 1024:
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        for r, p in zip(rows, xy):
            png = idx.nf_png(r["key"])
            if not png or r["dead"]:
                continue
            img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((24, 24)))
            box = AnnotationBbox(OffsetImage(img, zoom=0.7), p, frameon=True, pad=0.05,
                                 bboxprops={"edgecolor": colours[rows.index(r)], "linewidth": 1.2})
            ax.add_artist(box)
    for name, c in legend[:20]:
        ax.scatter([], [], c=c, label=name, s=20)
    if legend:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{m.meta['model']} {m.meta['layer']}: {len(rows)} {'neurons' if space == 'neurons' else 'top crops'}"
                 f" by their {'prototype' if space == 'neurons' else 'patch'} embedding ({m.meta['method']})", fontsize=9)
    return _png(fig)


def point_colours(rows: list[dict], space: str, color: str = "colour") -> tuple[list[str], list[tuple[str, str]]]:
    """(a CSS colour per point, [(legend name, colour)]): colour names by their swatch, classes by a
    20-colour palette in order of frequency (the rest grey)."""
    import matplotlib

    if color not in ("colour", "class"):

        raise UsageError(f"unknown colouring {color!r}; use colour or class")
    if color == "colour":
        names = [(r.get("color_label") or "grey").split("/")[0] for r in rows]
        return [SWATCH.get(n, "#8c8c8c") for n in names], [(n, SWATCH[n]) for n in SWATCH if n in set(names)]
    field = "image_class" if space == "crops" else "top_class"
    names = [r.get(field) or "" for r in rows]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    top = [n for n, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n][:20]
    palette = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
    which = {n: palette[i] for i, n in enumerate(top)}
    return [which.get(n, "#bbbbbb") for n in names], [(n, which[n]) for n in top]
