"""Pass 2 (crops + Neuron Features + sprites) vs just decoding the same images.

    python bench/features.py [--images ../shared/data/cifar10/lossless-train] [--weights ...resnet20-12fca82f.th]

Runs pass 1 of cifar-resnet20 (all conv layers) once, builds the crop plan, then alternates
decode-only passes over the needed images and full pass-2 runs, and prints the median ratio.
Without ../shared/data it falls back to the demo's generated images and model. Target <= 1.5x.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from neuronindex import features
from neuronindex.extract import image_batches
from neuronindex.ingest import IngestParams, pass1, prepare
from neuronindex.stats import split

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", default=str(SHARED / "cifar10" / "lossless-train"))
    parser.add_argument("--weights", default=str(SHARED / "cifar10-resnet" / "resnet20-12fca82f.th"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if Path(args.images).exists():
        run = prepare("cifar-resnet20", args.images, "all-conv", weights=args.weights, params=IngestParams(batch_size=256))
    else:
        from neuronindex.demo import preprocessing, run_demo

        out = run_demo("neuronindex-demo", progress=False)
        run = prepare("python:neuronindex.demo:demo_cnn", str(Path("neuronindex-demo") / "images" / "train"), "all-conv",
                      weights="neuronindex-demo/model.pt", preprocessing=preprocessing(), params=IngestParams())
        del out
    stats = pass1(run, progress=False)
    results = split(stats[0].result(), [s.layer.channels for s in run.selections])
    plan, _ = features.plan_from_results(run.selections, results, 0.7, 100)
    needed = sorted(set(plan.image[plan.use_nf | plan.sprite].tolist()))
    decode, full = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _batch in image_batches(run.images, run.loaded.preprocessing, 64, 0, needed):
            pass
        decode.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        features.compute(plan, run.images, run.loaded.preprocessing, progress=False)
        full.append(time.perf_counter() - t0)
    d, f = statistics.median(decode), statistics.median(full)
    print(f"{len(needed)} images decoded for {plan.n_neurons} neurons ({int(plan.use_nf.sum())} NF crops): "
          f"decode only {d:.2f} s, pass 2 {f:.2f} s, ratio {f / d:.2f} (median of {args.repeats})")


if __name__ == "__main__":
    main()
