"""Scale-out on paper, measured where it can be (`ingest --ray`).

    python bench/scale.py            # measure, then project ResNet-50 layer1-4 over ImageNet-train
    python bench/scale.py --quick    # fewer merges

Measured here, on the CPU:
1. One pass-1 worker: `distributed.pass1_shard` exactly as a Ray task runs it (one thread: a
   worker of --ray-cpus-per-worker 1), the whole task (model load, image listing, decoding,
   forward, statistics, the state's serialisation) on shard 0 of 8, for the real cifar-resnet20
   over CIFAR-10 and a ResNet-50 (torchvision, random weights; the cost does not depend on them)
   over the 500 ImageNet photos of ../shared/data; and the decode alone (read, decode, resize) per
   image, the part a GPU worker still does on its CPUs.
2. The driver's merge: a pass-1 state of ResNet-50 layer1-4's size (its 3,840 channels; top and
   bottom lists, 1,000 class sums, a 2,048-image probe, histograms) is written once; the driver's
   cost per shard is loading one such file and folding it in (`LayerStats.merge`), measured for
   2 to 64 states (the merge of N states is N such steps: its cost is linear in N).
3. The driver's merge of pass-2 canvases (GB/s of Chan's update).
4. The projection for ResNet-50 layer1-4 over ImageNet-train on 8 GPUs, from those figures and
   one stated assumption: the GPU's forward rate (`--gpu-images-per-second`, which cannot be
   measured here).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
IMAGENET_TRAIN = 1_281_167
R50_LAYERS = "layer1,layer2,layer3,layer4"


def worker(spec, weights, images, layers, size=None, shard=(0, 8), batch=32) -> dict:
    """One pass-1 shard task, timed whole, and the decode of its images alone."""
    from neuronindex.jobs.distributed import pass1_shard
    from neuronindex.nets.extract import image_batches
    from neuronindex.jobs.ingest import IngestParams, prepare
    from neuronindex.nets.models import Preprocessing, load_model

    import torch

    torch.set_num_threads(1)
    loaded = load_model(spec, weights)
    if size:
        loaded.preprocessing = Preprocessing(input_size=size, resize=256)
    run = prepare(loaded, str(images), layers, params=IngestParams(batch_size=batch, workers=0))
    meta = dict(run.meta)
    n = len(range(shard[0], len(run.positions()), shard[1]))
    t0 = time.perf_counter()
    state = pass1_shard(meta, shard[0], shard[1], 1)
    task = time.perf_counter() - t0
    positions = list(range(shard[0], len(run.positions()), shard[1]))
    t0 = time.perf_counter()
    for _ in image_batches(run.images, run.loaded.preprocessing, batch, 0, positions):
        pass
    decode = time.perf_counter() - t0
    return {"images": n, "task_s": task, "per_image_ms": 1000 * task / n, "decode_ms": 1000 * decode / n,
            "state_mb": len(state) / 2 ** 20, "channels": sum(s.layer.channels for s in run.selections)}


def resnet50_fields() -> tuple[int, float]:
    """(channels, NF canvas bytes) of ResNet-50 layer1-4: 45 bytes per receptive-field pixel."""
    from neuronindex.nets.layers import trace
    from neuronindex.nets.models import load_model

    sel = trace(load_model("torchvision:resnet50")).select(R50_LAYERS)
    channels = sum(s.layer.channels for s in sel)
    area = sum(s.layer.channels * float(s.layer.rf_size) ** 2 for s in sel)
    return channels, 45.0 * area


def merge_cost(counts, channels: int) -> list[dict]:
    """Seconds for the driver to load and fold in N states of `channels` channels."""
    import torch

    from neuronindex.jobs.ingest import load_state
    from neuronindex.science.stats import LayerStats

    torch.manual_seed(0)
    stats = LayerStats(channels, 100, 400, 1000, 2048, bottom_k=20)
    b = 64
    for step in range(4):  # fill every list and table with real-looking values
        acts = torch.relu(torch.randn(b, channels, 2, 2))
        stats.add(acts, torch.arange(step * b, (step + 1) * b), torch.randint(0, 1000, (b,)))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.npz"  # the layout of ingest.state_bytes, with empty metadata
        np.savez(path, __meta__=np.frombuffer(json.dumps({}).encode(), dtype=np.uint8),
                 **{f"0/{k}": v for k, v in stats.state_dict().items()})
        size = path.stat().st_size / 2 ** 20
        for n in counts:
            t0 = time.perf_counter()
            _, merged = load_state(path)
            for _ in range(n - 1):
                merged.merge(load_state(path)[1])
            merged.result()
            out.append({"shards": n, "seconds": time.perf_counter() - t0, "state_mb": size})
    return out


def canvas_merge_rate(megabytes: int = 256) -> float:
    """GB of NF canvas sums per second that the driver folds in (Canvases.merge, Chan's update)."""
    from neuronindex.science.features import Canvases

    side = int(np.sqrt(megabytes * 2 ** 20 / 28 / 64))  # 64 neurons of side x side fields, 28 bytes a pixel
    a, b = Canvases(np.full((64, 2), side)), Canvases(np.full((64, 2), side))
    rng = np.random.default_rng(0)
    for c in (a, b):
        c.sums[:] = rng.random(c.sums.shape, dtype=np.float32)
    warm = Canvases(np.full((1, 2), 4))
    warm.merge(warm.sums.copy(), warm.sprites.copy())  # compile first
    t0 = time.perf_counter()
    a.merge(b.sums, b.sprites)
    return a.sums.nbytes / 2 ** 30 / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gpu-images-per-second", type=float, default=2000.0,
                        help="assumed ResNet-50 forward rate of one GPU with the statistics (cannot be measured here)")
    parser.add_argument("--cpus-per-gpu", type=int, default=8, help="decoding CPUs beside each GPU")
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"needs {SHARED} (the real networks and images)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cifar = worker("cifar-resnet20", str(SHARED / "cifar10-resnet" / "resnet20-12fca82f.th"),
                   SHARED / "cifar10" / "lossless-train", "all-conv", batch=128)
    print(f"one worker (1 CPU), cifar-resnet20 all-conv, shard 0/8 of lossless-train: {cifar['images']} images in "
          f"{cifar['task_s']:.1f} s = {cifar['per_image_ms']:.2f} ms/image for the whole task "
          f"(decode alone {cifar['decode_ms']:.2f} ms/image); state {cifar['state_mb']:.1f} MB")
    r50 = worker("torchvision:resnet50", None, SHARED / "imagenet-sample", R50_LAYERS, size=(224, 224))
    print(f"one worker (1 CPU), resnet50 layer1-4 at 224 px, shard 0/8 of 500 ImageNet photos: {r50['images']} images "
          f"in {r50['task_s']:.1f} s = {r50['per_image_ms']:.0f} ms/image (decode alone {r50['decode_ms']:.1f} "
          f"ms/image); state {r50['state_mb']:.0f} MB for {r50['channels']} channels")
    counts = (2, 8) if args.quick else (2, 8, 32, 64)
    merges = merge_cost(counts, r50["channels"])
    for m in merges:
        print(f"driver merge of {m['shards']:>2} ResNet-50-sized states ({m['state_mb']:.0f} MB each): "
              f"{m['seconds']:.1f} s ({m['seconds'] / m['shards']:.2f} s per state)")
    per_state = merges[-1]["seconds"] / merges[-1]["shards"]
    channels, nf_bytes = resnet50_fields()
    # the projection
    gpus, shards = args.gpus, 4 * args.gpus
    decode_rate = args.cpus_per_gpu * 1000.0 / r50["decode_ms"] * gpus  # images/s of the whole cluster
    gpu_rate = args.gpu_images_per_second * gpus
    pass1 = IMAGENET_TRAIN / min(decode_rate, gpu_rate)
    merge = shards * per_state
    # pass 2 on the driver: each NF range decodes the images of its neurons' top lists again; at
    # most neurons x top-k distinct images (every top image a different photo: the upper bound)
    distinct = min(channels * 100, IMAGENET_TRAIN)

    def pass2(memory_mb):
        ranges = math.ceil(nf_bytes / (memory_mb * 2 ** 20))
        return ranges, ranges * distinct * r50["decode_ms"] / 1000 / args.cpus_per_gpu
    print(f"\nprojection: ResNet-50 layer1-4 ({channels} channels) over ImageNet-train ({IMAGENET_TRAIN:,} images), "
          f"{gpus} GPUs with {args.cpus_per_gpu} decoding CPUs each, {shards} shards")
    print(f"  pass 1: decode {decode_rate:,.0f} images/s, GPUs {gpu_rate:,.0f} images/s (assumed "
          f"{args.gpu_images_per_second:g} per GPU) -> {pass1 / 60:.1f} min; bottleneck: "
          f"{'decode' if decode_rate < gpu_rate else 'GPU forward'}")
    print(f"  merge on the driver: {shards} x {per_state:.2f} s = {merge / 60:.1f} min")
    rate = canvas_merge_rate()
    sums_gb = nf_bytes * 28 / 45 / 2 ** 30  # of the 45 bytes per field pixel, 28 are the summed planes
    print(f"  driver's canvas merge: {rate:.2f} GB/s measured; every part returns its canvases of each range "
          f"({sums_gb:.1f} GB over all ranges)")
    for memory in (512, 16384):
        ranges, seconds = pass2(memory)
        split = seconds / gpus + gpus * sums_gb / rate  # decodes spread over the nodes, then the driver merges
        print(f"  pass 2, --nf-memory {memory}: NF canvases {nf_bytes / 2 ** 30:.1f} GB in {ranges} range(s), each "
              f"a decode of up to {distinct:,} top-list images: on the driver alone ({args.cpus_per_gpu} CPUs) "
              f"{seconds / 60:.0f} min; split over the {gpus} nodes {split / 60:.0f} min (decode "
              f"{seconds / gpus / 60:.1f} + merge {gpus * sums_gb / rate / 60:.1f}); re-forwards "
              f"{distinct / gpu_rate * 60 / 60:.1f} s")


if __name__ == "__main__":
    main()
