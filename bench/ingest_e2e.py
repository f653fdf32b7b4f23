"""The whole ingest, phase by phase, on the two real cases of issue 20.

    python bench/ingest_e2e.py [--case squeezenet|resnet56|both] [--data ../shared/data]

Each case runs `neuronindex.jobs.ingest.ingest` end to end (model load, image listing, pass 1, pass 2,
NF self-response, indexes, publish, FAISS files: a published, queryable index) in a fresh child
process, and prints every phase's seconds, the whole wall time and its ratio to pass 1 (the
target: <= 2.0x on SqueezeNet, <= 1.5x on resnet56), the child's peak resident memory (target
<= 2 GB on SqueezeNet) and the sizes of index.duckdb and vectors/.

  squeezenet  ../shared/data/imagenet-squeezenet over ../shared/data/imagenet-sample (500 photos),
              all nine `features.*` layers the tests use, Caffe preprocessing, batch 32, 2 workers
  resnet56    cifar-resnet56 real weights, all 55 conv layers, over cifar10/lossless-train (4,660 images)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from neuronindex.jobs.ingest import IngestParams, ingest
from neuronindex.nets.models import Preprocessing
case, data, out, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) or None
t0 = time.time()
if case == "squeezenet":
    layers = ["features.0", "features.3", "features.4", "features.5", "features.7", "features.8", "features.9",
              "features.10", "features.12"]
    caffe = Preprocessing(input_size=(227, 227), geometry="resize-crop", resize=256, mean=(104, 117, 123),
                          std=(1, 1, 1), channel_order="bgr", pixel_scale=255)
    summary = ingest("torchvision:squeezenet1_0", f"{data}/imagenet-sample", ",".join(layers), out,
                     weights=f"{data}/imagenet-squeezenet/squeezenet1_0-deepcompression.pth", name="squeezenet",
                     preprocessing=caffe, params=IngestParams(batch_size=32, workers=2, limit=limit), progress=False)
else:
    summary = ingest("cifar-resnet56", f"{data}/cifar10/lossless-train", "all-conv", out,
                     weights=f"{data}/cifar10-resnet/resnet56-4bfd9763.th", name="resnet56",
                     params=IngestParams(batch_size=128, workers=2, limit=limit), progress=False)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))  # KB
print(json.dumps({"timings": summary["timings"], "wall": time.time() - t0, "peak_kb": peak}))
"""


def size(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


BASELINE_MB = {"squeezenet": 500 + 392}  # the sizes for the same content (index.duckdb + vectors/)


def run_case(case: str, data: str, limit: int = 0) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "index"
        started = time.time()
        done = subprocess.run([sys.executable, "-c", CHILD, case, data, str(out), str(limit)], capture_output=True,
                              text=True)
        elapsed = time.time() - started
        if done.returncode != 0:
            print(f"{case}: failed\n{done.stderr[-2000:]}")
            return None
        result = json.loads(done.stdout.strip().splitlines()[-1])
        t = result["timings"]
        phases = ["pass1", "directions", "pass2", "self_response", "indexes", "encode", "publish", "vectors"]
        accounted = sum(t.get(p, 0) for p in phases)
        if limit:
            print(f"{case}, first {limit} images only: peak RSS {result['peak_kb'] / 1024:.0f} MB, "
                  f"whole command {elapsed:.1f} s")
            return result
        print(f"{case}: whole command {elapsed:.1f} s (ingest() {result['wall']:.1f} s), "
              f"{elapsed / t['pass1']:.2f}x pass 1 (target {'2.0' if case == 'squeezenet' else '1.5'}x)")
        print("   " + ", ".join(f"{p} {t[p]:.1f} s ({t[p] / t['pass1']:.2f}x)" for p in phases if p in t)
              + f", the rest (start-up, model load, listing) {elapsed - accounted:.1f} s")
        total = (size(out / "index.duckdb") + size(out / "vectors")) / 1e6
        versus = f" = {100 * total / BASELINE_MB[case]:.0f}% of the issue's {BASELINE_MB[case]} MB" if case in BASELINE_MB else ""
        print(f"   NF ranges {t.get('nf_ranges', 1)}; peak RSS {result['peak_kb'] / 1024:.0f} MB (the child's VmHWM, "
              f"target <= 2048 MB); index.duckdb {size(out / 'index.duckdb') / 1e6:.0f} MB + vectors/ "
              f"{size(out / 'vectors') / 1e6:.0f} MB{versus}")
        return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=["squeezenet", "resnet56", "both"], default="both")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"no data folder at {args.data}; pass --data DIR (the project's shared data)")
    print(f"{os.cpu_count()} cores; each case in a fresh process")
    for case in (["squeezenet", "resnet56"] if args.case == "both" else [args.case]):
        run_case(case, args.data)
        if case == "squeezenet":  # peak memory is flat in the number of images: half of them
            run_case(case, args.data, limit=250)


if __name__ == "__main__":
    main()
