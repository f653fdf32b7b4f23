"""Kinds of units side by side (seed 001's question, are single neurons the right unit of meaning?):
per layer with learned dictionaries, neurons, SVD directions, NMF atoms and SAE atoms compared on

  top_class_share  mean share of a unit's top images in its most frequent class (class purity)
  class_index      mean class selectivity index gamma (Rafegas et al.); csi: mean CSI (Morcos et al.)
  color_index      mean colour selectivity index alpha; color_selective: share with alpha >= the threshold
  redundancy       mean pairwise Jaccard overlap of the units' top-`k` image sets (seed 001's
                   redundancy), over the kind's units; for neurons over the K of largest activation
                   standard deviation, K the layer's atoms (every neuron otherwise weighs pairs by C^2)
  r2               reconstruction R^2 over the dictionaries' sample for K units: neurons, the K of
                   largest variance (every channel regressed on them); svd, K principal components
                   (the linear optimum; the indexed SVD directions are of pooled activations); nmf
                   and sae, their own codes (dictionaries table)
  l0               mean active atoms per position (nmf, sae)

Means are over the units that are not dead.
"""
from __future__ import annotations

import numpy as np

from neuronindex.store import execute

KIND_ORDER = ("channel", "svd", "nmf", "sae")


def pair_overlaps(sets: list[set]) -> list[float]:
    """The Jaccard overlap of every pair of sets (pairs of two empty sets left out)."""
    return [len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1:] if a | b]


def _jaccard(sets: list[set]) -> float | None:
    scores = pair_overlaps(sets)
    return float(np.mean(scores)) if scores else None


def comparison(con, model: str | None = None, k: int = 20, color_threshold: float = 0.4) -> list[dict]:
    """Rows (model, layer, kind, units, top_class_share, class_index, csi, color_index, color_selective,
    redundancy, r2, l0), layers in order, kinds channel, svd, nmf, sae where the layer has them."""
    layers = execute(con, "SELECT DISTINCT m.id, m.name, l.id, l.name, l.position FROM dictionaries d JOIN layers l "
                          "ON l.id = d.layer_id JOIN models m ON m.id = l.model_id WHERE (? IS NULL OR m.name = ?) "
                          "ORDER BY m.id, l.position", [model, model])
    out = []
    for _, model_name, layer_id, layer_name, _ in layers:
        fits = {r[0]: r[1:] for r in execute(con, "SELECT kind, atoms, r2, l0, r2_neurons, r2_pca FROM dictionaries "
                                                  "WHERE layer_id = ?", [layer_id])}
        atoms = max(f[0] for f in fits.values())
        any_fit = next(iter(fits.values()))
        r2 = {"channel": any_fit[3], "svd": any_fit[4], **{kind: f[1] for kind, f in fits.items()}}
        stats = execute(con, "SELECT kind, count(*), avg(top_class_share), avg(class_index), avg(csi), avg(color_index), "
                             "avg(CASE WHEN color_index >= ? THEN 1.0 WHEN color_index IS NOT NULL THEN 0.0 END) "
                             "FROM neurons WHERE layer_id = ? AND NOT dead GROUP BY kind", [color_threshold, layer_id])
        by_kind = {r[0]: r[1:] for r in stats}
        for kind in KIND_ORDER:
            if kind not in by_kind:
                continue
            units, share, gamma, csi, alpha, selective = by_kind[kind]
            order = "act_std DESC NULLS LAST, id" if kind == "channel" else "channel"
            tops = execute(con, f"SELECT list(t.image_id) FROM (SELECT id FROM neurons WHERE layer_id = ? AND kind = ? "
                                f"AND NOT dead ORDER BY {order} LIMIT ?) n JOIN topk t ON t.neuron_id = n.id "
                                f"WHERE t.rank <= ? GROUP BY n.id", [layer_id, kind, atoms, k])
            out.append({"model": model_name, "layer": layer_name, "kind": kind, "units": int(units),
                        "top_class_share": share, "class_index": gamma, "csi": csi, "color_index": alpha,
                        "color_selective": selective, "redundancy": _jaccard([set(r[0]) for r in tops]),
                        "r2": r2.get(kind), "l0": fits[kind][2] if kind in fits else None})
    return out
