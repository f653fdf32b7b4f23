"""Zhang (CS231n) on the real networks: what directions cost, and what they find.

For each case, two whole ingests into fresh indexes, one after the other in this process:
without directions (`--directions none`, bottom lists on) and with `--directions svd,random`
(defaults: Kaiser rank capped at 8, 4 random past the 0.95 variance quantile + 4 unconstrained,
max pooling). Prints every phase's time, the whole-run ratio and what the directions phase
adds relative to pass 1; then per layer the number of SVD directions kept and the largest
singular values, and Zhang (CS231n)'s redundancy comparison (report.figure_redundancy): mean pairwise
overlap of the top-20 and bottom-20 image sets of the 8 highest-variance neurons against the
SVD and random directions.

    python bench/directions.py                 # both cases (needs ../shared/data)
    python bench/directions.py --case resnet20
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SQUEEZE_LAYERS = "features.1,features.3,features.4,features.5,features.7,features.8,features.9,features.10,features.12"


def cases():
    from neuronindex.nets.models import Preprocessing

    caffe = Preprocessing(input_size=(227, 227), geometry="resize-crop", resize=256, mean=(104, 117, 123),
                          std=(1, 1, 1), channel_order="bgr", pixel_scale=255)
    return {
        "resnet20": dict(model="cifar-resnet20", weights=SHARED / "cifar10-resnet" / "resnet20-12fca82f.th",
                         images=SHARED / "cifar10" / "lossless-train", layers="all-conv", preprocessing=None,
                         batch=128, name="resnet20"),
        "squeezenet": dict(model="torchvision:squeezenet1_0",
                           weights=SHARED / "imagenet-squeezenet" / "squeezenet1_0-deepcompression.pth",
                           images=SHARED / "imagenet-sample", layers=SQUEEZE_LAYERS, preprocessing=caffe, batch=32,
                           name="squeezenet"),
    }


def run(case: dict, directions: str, folder: Path) -> tuple[dict, float]:
    from neuronindex.jobs.ingest import IngestParams, ingest

    t0 = time.time()
    summary = ingest(case["model"], str(case["images"]), case["layers"], folder, weights=str(case["weights"]),
                     name=case["name"], preprocessing=case["preprocessing"], progress=False,
                     params=IngestParams(batch_size=case["batch"], workers=2, directions=directions))
    return summary, time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["resnet20", "squeezenet"], action="append")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs the real networks and images")
    import neuronindex
    from neuronindex.report import figure_redundancy, figure_spectrum

    for name in args.case or ["resnet20", "squeezenet"]:
        case = cases()[name]
        with tempfile.TemporaryDirectory() as tmp:
            plain, t_plain = run(case, "none", Path(tmp) / "plain")
            full, t_full = run(case, "svd,random", Path(tmp) / "full")
            print(f"\n== {name}: {case['layers']} over {full['images']} images ({case['images'].name})")
            print(f"without directions: {t_plain:.1f} s  ({', '.join(f'{k} {v:.1f}' for k, v in plain['timings'].items())})")
            print(f"with svd,random:    {t_full:.1f} s  ({', '.join(f'{k} {v:.1f}' for k, v in full['timings'].items())})")
            t = full["timings"]
            print(f"whole ingest with / without: {t_full / t_plain:.2f}x; directions phase {t['directions']:.1f} s = "
                  f"{t['directions'] / t['pass1']:.2f}x pass 1; {full['directions']} directions beside "
                  f"{full['neurons']} neurons")
            with neuronindex.open(Path(tmp) / "full") as idx:
                for layer, s in figure_spectrum(idx, name).items():
                    sv = ", ".join(f"{v:.0f}" for v in s["singular_values"][:6])
                    print(f"  {layer:<14} svd kept {s['kept']}; singular values {sv}, ...")
                print("  redundancy (mean pairwise Jaccard of top-20 / bottom-20 image sets; pairs >= 0.5):")
                for layer, entry in figure_redundancy(idx, name).items():
                    cells = []
                    for group, v in entry.items():
                        top, bottom = v["top"], v["bottom"]
                        cells.append(f"{group} {top['mean_overlap']:.2f} ({top['pairs_over_half']}/{top['pairs']}) "
                                     f"/ {bottom['mean_overlap']:.2f} ({bottom['pairs_over_half']}/{bottom['pairs']})")
                    print(f"  {layer:<14} " + " | ".join(cells))


if __name__ == "__main__":
    main()
