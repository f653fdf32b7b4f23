"""Pass 2 (crops + Neuron Features + sprites) vs just decoding the same images.

    python bench/features.py [--images ../shared/data/cifar10/lossless-train] [--weights ...resnet20-12fca82f.th]

Two cases: cifar-resnet20 (all conv layers) on real 32 px CIFAR PNGs (skipped without
../shared/data), and torchvision resnet18 (random weights, layer1 + layer2) on generated 320x240
JPEGs shown at 224 px. Each runs pass 1 once, builds the crop plan, then alternates decode-only
passes over the needed images and full pass-2 runs, and prints the median ratio. Target <= 1.5x.
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
    stats = pass1(run, progress=False)
    results = split(stats.result(), [s.layer.channels for s in run.selections])
    plan, _ = features.plan_from_results(run.selections, results, 0.7, 100)
    needed = sorted(set(plan.image[plan.use_nf | plan.sprite].tolist()))
    decode, full = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _batch in image_batches(run.images, run.loaded.preprocessing, 64, workers, needed):
            pass
        decode.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        features.compute(plan, run.images, run.loaded.preprocessing, workers=workers, progress=False)
        full.append(time.perf_counter() - t0)
    d, f = statistics.median(decode), statistics.median(full)
    print(f"{name}: {len(needed)} images decoded for {plan.n_neurons} neurons ({int(plan.use_nf.sum())} NF crops): "
          f"decode only {d:.2f} s, pass 2 {f:.2f} s, ratio {f / d:.2f} (median of {repeats}, {workers} decoding workers)")


def main():
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", default=str(SHARED / "cifar10" / "lossless-train"))
    parser.add_argument("--weights", default=str(SHARED / "cifar10-resnet" / "resnet20-12fca82f.th"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers, the same for both timings")
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
