"""The real pass 2 (decode, re-forwards, crops, Neuron Features, sprites) vs decoding the same images.

    python bench/features.py [--images ../shared/data/cifar10/lossless-train] [--weights ...resnet20-12fca82f.th]

Two cases: cifar-resnet20 (all conv layers) on real 32 px CIFAR PNGs (skipped without
../shared/data), and torchvision resnet18 (random weights, layer1 + layer2) on generated 320x240
JPEGs shown at 224 px. Each runs pass 1 once, then alternates decode-only passes over the images
pass 2 needs and the real pass 2 of an ingest (`derive.run_all`: every NF range's decode, the
greyscale and patch-vector re-forwards, the canvases; then NF self-response, indexes and PNG
encoding, timed apart), and prints the medians and ratios to the decode and to pass 1.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from neuronindex.science import features
from neuronindex.nets.extract import image_batches
from neuronindex.jobs.ingest import IngestParams, pass1, prepare

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def photos(folder: Path, n: int = 400) -> Path:
    """n generated 320x240 JPEGs (shapes on noisy backgrounds): decoding costs what photos cost."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for c in range(4):
        d = folder / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n // 4):
            img = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x, y = (int(v) for v in rng.integers(0, 280, 2))
                draw.ellipse((x, y, x + 60, y + 60), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            img.save(d / f"{i}.jpg", quality=90)
    return folder


def measure(name, run, repeats, workers=0):
    from neuronindex.jobs.derive import run_all
    from neuronindex.jobs.ingest import layer_results

    t0 = time.perf_counter()
    stats = pass1(run, progress=False)
    first = time.perf_counter() - t0
    results = layer_results(run, stats)
    plan, _ = features.plan_from_results(run.selections, results, 0.7, 100)
    needed = sorted(set(plan.image[np.isfinite(plan.weight)].tolist()))
    decode, phases = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _batch in image_batches(run.images, run.loaded.preprocessing, run.params.batch_size, workers, needed):
            pass
        decode.append(time.perf_counter() - t0)
        timings = {}
        run_all(run, results, progress=False, timings=timings).patches.close()
        phases.append(timings)
    d = statistics.median(decode)
    p2 = statistics.median(t["pass2"] for t in phases)
    rest = {k: statistics.median(t[k] for t in phases) for k in ("self_response", "indexes", "encode")}
    print(f"{name}: {len(needed)} images for {plan.n_neurons} neurons ({int(plan.use_nf.sum())} NF crops, "
          f"{phases[0]['nf_ranges']} NF range(s)); pass 1 {first:.2f} s; decode only {d:.2f} s; real pass 2 {p2:.2f} s "
          f"= {p2 / d:.2f}x the decode, {p2 / first:.2f}x pass 1; then "
          + ", ".join(f"{k} {v:.2f} s" for k, v in rest.items())
          + f" (medians of {repeats}, {workers} decoding workers)")


def main():
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", default=str(SHARED / "cifar10" / "lossless-train"))
    parser.add_argument("--weights", default=str(SHARED / "cifar10-resnet" / "resnet20-12fca82f.th"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for every timing")
    args = parser.parse_args()
    if Path(args.images).exists():
        measure("cifar-resnet20 all-conv, 32 px PNGs",
                prepare("cifar-resnet20", args.images, "all-conv", weights=args.weights,
                        params=IngestParams(batch_size=256)), args.repeats, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        measure("resnet18 (random) layer1+layer2, 320x240 JPEGs at 224 px",
                prepare("torchvision:resnet18", str(photos(Path(tmp))), "layer1,layer2",
                        params=IngestParams(batch_size=32, top_k=50)), args.repeats, args.workers)


if __name__ == "__main__":
    main()
