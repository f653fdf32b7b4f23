"""Pass-1 overhead: forward-only time vs forward + streaming statistics, and peak memory.

Runs the two variants interleaved batch by batch in one process (these machines are noisy),
repeats, and prints the median ratio. Memory: peak RSS of a pass-1 run in a fresh process for
two dataset sizes (the child's own high-water mark, VmHWM, with glibc's mmap threshold fixed so
the figure is live memory); it must not grow with the number of images.

    python bench/ingest.py            # both models
    python bench/ingest.py --quick    # fewer batches
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from neuronindex.nets.extract import Extractor
from neuronindex.nets.layers import trace
from neuronindex.nets.models import Preprocessing, load_model
from neuronindex.science.stats import LayerStats

CASES = {
    "cifar-resnet56 all-conv": ("cifar-resnet56", "all-conv", (32, 32), 128),
    "resnet18 (random, 224px) layer1-4": ("torchvision:resnet18", "layer1,layer2,layer3,layer4", (224, 224), 32),
}


def overhead(spec, layers, size, batch, batches, repeats):
    torch.manual_seed(0)
    loaded = load_model(spec)
    loaded.preprocessing = Preprocessing(input_size=size, geometry="resize", resize=None)
    selections = trace(loaded).select(layers)
    ext = Extractor(loaded, [s.layer.name for s in selections])
    truncated = _truncated_forward(loaded, selections)
    images = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8)
    ratios, ips, fwd_times, all_times = [], [], [], []
    for _ in range(repeats):
        channels = [s.layer.channels for s in selections]
        stats = LayerStats(sum(channels), 100, 400, 10, 2048)
        labels = torch.randint(0, 10, (batch,))
        t_fwd = t_all = 0.0
        ext.summaries(images, stats.threshold(), channels)  # warm-up
        with torch.inference_mode():
            truncated(loaded.preprocessing.normalize(images))
        for b in range(batches):
            t0 = time.perf_counter()
            with torch.inference_mode():
                truncated(loaded.preprocessing.normalize(images))
            t1 = time.perf_counter()
            ids = torch.arange(b * batch, (b + 1) * batch)
            stats.add_summary(ext.summaries(images, stats.threshold(), channels), ids, labels)
            t2 = time.perf_counter()
            t_fwd += t1 - t0
            t_all += t2 - t1
        ratios.append(t_all / t_fwd)
        ips.append(batches * batch / t_all)
        fwd_times.append(t_fwd)
        all_times.append(t_all)
    # the times of the run whose ratio is the median
    mid = ratios.index(statistics.median_low(ratios))
    return statistics.median_low(ratios), ips[mid], ratios, fwd_times[mid], all_times[mid]


def _truncated_forward(loaded, selections):
    """The plain forward up to the deepest selected layer, returning only that layer's output:
    the least any activation-recording tool must compute (the baseline of the ratio)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    deepest = selections[-1].layer.name
    return create_feature_extractor(loaded.module, return_nodes={deepest: "out"}).eval()


def peak_memory(spec, layers, size, batch, n_images):
    code = f"""
import torch
from neuronindex.nets.extract import Extractor
from neuronindex.nets.layers import trace
from neuronindex.nets.models import Preprocessing, load_model
from neuronindex.science.stats import LayerStats
loaded = load_model({spec!r})
loaded.preprocessing = Preprocessing(input_size={size!r}, geometry="resize", resize=None)
sel = trace(loaded).select({layers!r})
ext = Extractor(loaded, [s.layer.name for s in sel])
ch = [s.layer.channels for s in sel]
stats = LayerStats(sum(ch), 100, 400, 10, 2048)
images = torch.randint(0, 256, ({batch}, *{size!r}, 3), dtype=torch.uint8)
for b in range({n_images} // {batch}):
    summary = ext.summaries(images, stats.threshold(), ch)
    stats.add_summary(summary, torch.arange(b * {batch}, (b + 1) * {batch}), torch.zeros({batch}, dtype=torch.long))
# VmHWM: this process's own peak (ru_maxrss would also count the parent's size at fork)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""
    # a fixed glibc mmap threshold returns every large tensor to the system when freed: peak RSS is
    # then live memory, not heap fragmentation (which varies by +-150 MB from run to run)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {}
    for name, (spec, layers, size, batch) in CASES.items():
        # long enough that the top lists saturate as in a real run (the first batches are all
        # candidates); the ratio covers the whole run, warm-up included
        batches = 8 if args.quick else 40
        if size[0] > 100:
            batches = 4 if args.quick else 12
        ratio, ips, all_ratios, t_fwd, t_all = overhead(spec, layers, size, batch, batches, 2 if args.quick else 5)
        small = 4 * batch if size[0] > 100 else 16 * batch
        m1 = peak_memory(spec, layers, size, batch, small)
        m2 = peak_memory(spec, layers, size, batch, small * 4)
        images = batches * batch
        results[name] = {"ratio": ratio, "images_per_s": ips, "runs": all_ratios, "forward_s": t_fwd,
                         "pass1_s": t_all, "images": images, "peak_mb": {small: m1, small * 4: m2}}
        print(f"{name}: forward-only {t_fwd:.2f} s, pass 1 {t_all:.2f} s for {images} images; "
              f"pass-1 / forward-only = {ratio:.3f} (median of {len(all_ratios)}: "
              f"{', '.join(f'{r:.3f}' for r in all_ratios)}), {ips:.0f} images/s with statistics; "
              f"peak RSS {m1:.0f} MB for {small} images, {m2:.0f} MB for {small * 4}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
