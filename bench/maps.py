"""Dai 2020 and Yu et al. 2014 on the real networks: category hierarchy, prediction trees and maps, timed.

Ingests SqueezeNet 1.0 over the 500 ImageNet photos (the nine layers, --spatial-means) and
ResNet-56 over CIFAR-10's lossless-train (layer1.8, layer2.8, layer3.8, --spatial-means) into
fresh indexes (or reuses --squeezenet / --resnet56 indexes), then times the whole commands a user
runs, each through the same function the CLI calls:

  categories   the hierarchy at each stored layer (ingest builds the deepest one): top split, MST
               centre and hub, and for ImageNet the WordNet agreement against shuffled labels
  tree         `tree --class horse` (ResNet-56) and `--class dog` (SqueezeNet, an inner WordNet class)
  map          the neurons map of SqueezeNet features.12 (512 neurons) by t-SNE and UMAP, and the crops
               map of the same layer (512 x 100 = 51,200 top crops) by both

    python bench/maps.py                       # needs ../shared/data; about 20 minutes on 2 cores
    python bench/maps.py --squeezenet /tmp/sq --resnet56 /tmp/r56 --skip-crops
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from directions import SHARED, cases  # bench/ is the script's directory, first on sys.path
from neuronindex.jobs import categories as categories_job


def build(kind: str, out: Path) -> Path:
    from neuronindex.jobs.ingest import IngestParams, ingest

    c = cases()["squeezenet"] if kind == "squeezenet" else {
        "model": "cifar-resnet56", "weights": SHARED / "cifar10-resnet" / "resnet56-4bfd9763.th",
        "images": SHARED / "cifar10" / "lossless-train", "layers": "layer1.8,layer2.8,layer3.8",
        "preprocessing": None, "batch": 256, "name": "resnet56"}
    t0 = time.perf_counter()
    ingest(c["model"], str(c["images"]), c["layers"], out, weights=str(c["weights"]), name=c["name"],
           preprocessing=c["preprocessing"], params=IngestParams(batch_size=c["batch"], workers=2, spatial_means=True),
           progress=False)
    print(f"ingest {kind}: {time.perf_counter() - t0:.1f} s")
    return out


def categories(index: Path) -> None:
    import neuronindex

    with neuronindex.open(index) as idx:
        layers = [r["name"] for r in idx.layers().rows()]
    for layer in layers:
        for pooling in ("mean", "max"):
            t0 = time.perf_counter()
            h = categories_job.publish_hierarchy(index, layer=layer, pooling=pooling)
            took = time.perf_counter() - t0
            split = " | ".join(", ".join(s[:6]) + (f" (+{len(s) - 6})" if len(s) > 6 else "") for s in h["top_split"])
            line = f"  {layer:12s} {pooling:4s} {took:5.1f} s  centre {h['centre']}, hub {h['hub']}; top: {split}"
            if h["wordnet"]:
                w = h["wordnet"]
                line = (f"  {layer:12s} {pooling:4s} {took:5.1f} s  WordNet Spearman {w['correlation']:.3f} "
                        f"(shuffled {w['baseline']:.3f}), sibling AUC {w['sibling_auc']:.3f}; centre {h['centre']}, "
                        f"hub {h['hub']}")
            print(line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--squeezenet", type=Path, default=None, help="an index of SqueezeNet over the sample (else built)")
    ap.add_argument("--resnet56", type=Path, default=None, help="an index of ResNet-56 over lossless-train (else built)")
    ap.add_argument("--skip-crops", action="store_true", help="leave out the 51,200-crop maps (about 10 minutes)")
    args = ap.parse_args()
    from neuronindex.jobs import maps

    tmp = Path(tempfile.mkdtemp(prefix="bench-maps-"))
    try:
        sq = args.squeezenet or build("squeezenet", tmp / "sq")
        r56 = args.resnet56 or build("resnet56", tmp / "r56")
        for name, index in (("resnet56", r56), ("squeezenet", sq)):
            print(f"categories, {name} (each layer, both poolings):")
            categories(index)
        for index, cls, layer in ((r56, "horse", "layer3.8"), (sq, "dog", "features.12")):
            done = categories_job.tree(index, cls, layer)
            print(f"tree --class {cls} --layer {layer}: {done['images']} images of {done['class_images']}, "
                  f"{done['filters']} filters, {done['merges']} merges, root children {done['root_children']} "
                  f"reaching {done['reachable_at_top']}: {done['seconds']:.1f} s")
        spaces = ("neurons",) if args.skip_crops else ("neurons", "crops")
        for method in ("tsne", "umap"):
            for space in spaces:
                t0 = time.perf_counter()
                made = maps.make_maps(sq, ["features.12"], spaces=(space,), method=method, force=True, progress=False)
                print(f"map --layers features.12 --space {space} --method {method}: {made[0]['points']} points, "
                      f"{time.perf_counter() - t0:.1f} s (layout {made[0]['seconds']:.1f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
