"""Activation maximisation (Dai 2020, Øygard 2016) on the real networks: speed and quality.

For each case: one ingest (its first --images images, pass 1 and pass 2 for a_max and the NFs),
then the whole `neuronindex visualize` command as a user runs it (`visualize.run`: model load,
colour matrix, optimisation, measurement, PNG encoding, publish): every neuron of the first layer,
then the first --per-layer live neurons of every other layer; 256 steps, unit objective, Fourier
+ decorrelated colour (the defaults).
Prints neurons per second per layer and overall, then the quality figures of the README:

  reached    share of neurons whose optimised image reaches at least the activation of the
             neuron's best dataset image (viz_activation_ratio >= 1)
  ratio      median viz_activation_ratio
  colour     first layer: for colour-selective neurons (NF alpha >= 0.4), the share whose
             optimised image has the NF's colour axis (hue within 30 deg, mod 180) against the
             share for the others; corr(alpha_NF, alpha_viz)

It also times one batch of 16 neurons against the same 16 one at a time (batch 1), the gain of
putting different neurons' images in one forward/backward.

    python bench/visualize.py                   # both cases (needs ../shared/data)
    python bench/visualize.py --case squeezenet --per-layer 32 --device cuda
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from directions import SHARED  # noqa: E402 - the real networks and images, as bench/directions.py ingests them
from directions import cases as ingest_cases  # noqa: E402
from neuronindex.science.optvis import render


def cases():
    """bench/directions.py's two cases; SqueezeNet on four layers (one per field size)."""
    out = ingest_cases()
    out["resnet20"]["first"] = "conv1"
    out["squeezenet"].update(layers="features.1,features.4,features.7,features.12", first="features.1")
    return out


def quality(idx, first: str) -> dict:
    import numpy as np

    rows = idx.sql("SELECT layer, color_index, hue, viz_activation_ratio AS r, viz_color_index, viz_hue "
                   "FROM neuron_view WHERE viz_activation_ratio IS NOT NULL AND kind = 'channel'").rows()
    out = {"all": (np.mean([x["r"] >= 1 for x in rows]), float(np.median([x["r"] for x in rows])), len(rows))}
    for layer in dict.fromkeys(x["layer"] for x in rows):
        rs = [x["r"] for x in rows if x["layer"] == layer]
        out[layer] = (np.mean([v >= 1 for v in rs]), float(np.median(rs)), len(rs))

    def axis(x):
        if x["hue"] is None or x["viz_hue"] is None:
            return False
        d = abs(x["hue"] - x["viz_hue"]) % 180
        return min(d, 180 - d) <= 30

    firsts = [x for x in rows if x["layer"] == first]
    sel = [axis(x) for x in firsts if (x["color_index"] or 0) >= 0.4]
    non = [axis(x) for x in firsts if (x["color_index"] or 0) < 0.4]
    pairs = np.array([(x["color_index"], x["viz_color_index"]) for x in firsts
                      if x["color_index"] is not None and x["viz_color_index"] is not None])
    corr = float(np.corrcoef(pairs.T)[0, 1]) if len(pairs) > 2 else float("nan")
    out["colour"] = (len(sel), float(np.mean(sel)) if sel else float("nan"), float(np.mean(non)) if non else float("nan"),
                     corr)
    return out


def batching(index: Path, layer: str, device: str) -> tuple[float, float]:
    """Seconds for 16 neurons of `layer` in one batch, and one at a time (64 steps each)."""
    import neuronindex
    from neuronindex.jobs import visualize as viz

    with neuronindex.open(index) as idx:
        name, rows = next(iter(viz._models(idx, None).items()))
        m = viz._open_model(idx, name, rows)
        row, targets = viz._layer_targets(idx, name, [layer], "unit")[0]
    layer_ = m.graph.lookup(row["node"])
    p = render.VizParams(steps=64).resolved(m.loaded.preprocessing.input_size)
    targets = targets[:16]
    viz._run_units(m, layer_, targets[:2], p, device)  # warm-up
    t0 = time.perf_counter()
    viz._run_units(m, layer_, targets, p, device)
    together = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in targets:
        viz._run_units(m, layer_, [t], p, device)
    return together, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["resnet20", "squeezenet"], action="append")
    parser.add_argument("--per-layer", type=int, default=16)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs the real networks and images")
    import torch

    import neuronindex
    from neuronindex.jobs import visualize as viz
    from neuronindex.jobs.ingest import IngestParams, ingest

    print(f"torch threads: {torch.get_num_threads()}, device {args.device}")
    for name in args.case or ["resnet20", "squeezenet"]:
        case = cases()[name]
        with tempfile.TemporaryDirectory() as tmp:
            index = Path(tmp) / "index"
            ingest(case["model"], str(case["images"]), case["layers"], index, weights=str(case["weights"]),
                   name=case["name"], preprocessing=case["preprocessing"], progress=False,
                   params=IngestParams(batch_size=32, workers=2, limit=args.images))
            t0 = time.perf_counter()  # the first layer whole (cheap, and its colour figures need every neuron)
            first = viz.visualize_layers(index, [case["first"]], params=render.VizParams(steps=args.steps), device=args.device,
                            progress=False)
            t1 = time.perf_counter()
            done = viz.visualize_layers(index, None, params=render.VizParams(steps=args.steps), device=args.device, progress=False,
                           per_layer=args.per_layer)
            seconds = time.perf_counter() - t1
            print(f"\n{name}: `neuronindex visualize --layers {case['first']} --steps {args.steps}`: "
                  f"{first['optimised']} neurons in {t1 - t0:.1f} s = {first['optimised'] / (t1 - t0):.2f} neurons/s; "
                  f"then `--per-layer {args.per_layer}` (the others): {done['optimised']} neurons in {seconds:.1f} s = "
                  f"{done['optimised'] / seconds:.2f} neurons/s")
            with neuronindex.open(index) as idx:
                per = idx.sql("SELECT n.layer, count(*) AS n, sum(v.seconds) AS s, any_value(v.width) AS w "
                              "FROM visualizations v JOIN neuron_view n ON n.id = v.neuron_id "
                              "GROUP BY n.layer ORDER BY min(n.id)").rows()
                q = quality(idx, case["first"])
            print("  layer            neurons  window  neurons/s  reached  median ratio")
            for r in per:
                share, med, _ = q[r["layer"]]
                print(f"  {r['layer']:<16} {r['n']:>7}  {r['w']:>4}px  {r['n'] / r['s']:>9.2f}  {share:>7.0%}  {med:>12.2f}")
            share, med, n = q["all"]
            print(f"  all              {n:>7}                     {share:>7.0%}  {med:>12.2f}")
            k, sel, non, corr = q["colour"]
            print(f"  first layer colour: {k} colour-selective neurons, colour axis of the NF in {sel:.0%} "
                  f"(others {non:.0%}); corr(alpha NF, alpha image) {corr:.2f}")
            deepest = per[-1]["layer"]
            together, alone = batching(index, deepest, args.device)
            print(f"  batching ({deepest}, 16 neurons, 64 steps): one batch {together:.1f} s, one at a time "
                  f"{alone:.1f} s = {alone / together:.1f}x")


if __name__ == "__main__":
    main()
