"""Network Dissection's cost: the whole `neuronindex dissect` command against a plain forward.

For each case (SqueezeNet 1.0 over the 500 ImageNet photos, all nine layers; cifar-resnet56 over
the 4,660 lossless CIFAR-10 training images, all conv layers), ingests an index (or reuses
--index-dir/<case>), then times in one run:

  forward   the same images decoded and preprocessed as the model sees them, then one forward
            pass through the model up to the deepest dissected layer, in batches of 32: what
            any tool that looks at these maps must pay;
  dissect   the whole command a user types, `neuronindex dissect INDEX --concepts colour -q`, as a
            subprocess: start-up, reading the images, colour-naming every pixel, the forward,
            thresholds, IoU tallies, publishing.

and prints the ratio dissect / forward, with the dissection's own per-layer figures and how far the
colour-concept labels agree with the colour index (`agreement`).

    python bench/dissect.py                          # needs ../shared/data; about 6 minutes on 2 cores
    python bench/dissect.py --case squeezenet --index-dir /tmp/bench-indexes
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from directions import SHARED, cases  # bench/ is the script's directory, first on sys.path


def forward_seconds(index: Path, batch: int = 32) -> tuple[float, int]:
    """Decode, preprocess and forward every image of the index through its model up to the deepest
    stored layer (the extractor dissect uses), as dissect reads them."""
    import torch

    from neuronindex.query.reader import Reader

    with Reader(index) as idx:
        model = idx.only_model()
        row = idx.model_row(model)
        pre = idx.rows("SELECT preprocessing FROM models WHERE id = ?", [row["id"]])[0]["preprocessing"]
        images = [(r["path"], r["source"]) for r in idx.rows(
            "SELECT i.path, d.source FROM images i JOIN datasets d ON d.id = i.dataset_id WHERE i.problem IS NULL "
            "ORDER BY i.id")]
        net = idx.network(model, None)
        t0 = time.perf_counter()
        for s in range(0, len(images), batch):
            seen = np.stack([idx.seen(p, src, pre) for p, src in images[s:s + batch]])
            with torch.no_grad():
                net.extractor(torch.from_numpy(seen))
        return time.perf_counter() - t0, len(images)


def agreement(index: Path) -> dict:
    """Where both apply: units labelled with a colour concept (best colour IoU above the threshold)
    that are colour selective by the colour index (a colour label: alpha >= 0.4). Agreement: the
    concept is the NF's colour name (either end of a two-colour NF)."""
    import neuronindex

    with neuronindex.open(index) as idx:
        rows = idx.query(
            "SELECT n.color_name, n.color_second, n.color_label, c.name AS concept FROM unit_concepts u "
            "JOIN dissections d ON d.id = u.dissection_id JOIN concepts c ON c.id = u.concept_id "
            "JOIN neurons n ON n.id = u.neuron_id WHERE d.source = 'colour' AND u.rank = 1 "
            "AND u.iou > d.iou_threshold").rows()
        selective = idx.query("SELECT count(*) AS n FROM neurons n JOIN dissections d ON d.layer_id = n.layer_id "
                              "WHERE d.source = 'colour' AND n.kind = 'channel' AND n.color_label IS NOT NULL"
                              ).rows()[0]["n"]
    both = [r for r in rows if r["color_label"]]
    agree = [r for r in both if r["concept"] in (r["color_name"], r["color_second"])]
    return {"labelled": len(rows), "colour_selective": selective, "both": len(both), "agree": len(agree)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["squeezenet", "resnet56"], action="append")
    ap.add_argument("--index-dir", type=Path, help="keep (and reuse) the ingested indexes here")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs the real networks and images")
    from neuronindex.jobs.ingest import IngestParams, ingest

    folder = args.index_dir or Path(tempfile.mkdtemp(prefix="bench-dissect-"))
    all_cases = cases()
    all_cases["resnet56"] = dict(all_cases["resnet20"], model="cifar-resnet56", name="resnet56",
                                 weights=SHARED / "cifar10-resnet" / "resnet56-4bfd9763.th")
    for name in args.case or ["squeezenet", "resnet56"]:
        c = all_cases[name]
        index = folder / name
        if not (index / "index.duckdb").exists():
            t0 = time.perf_counter()
            ingest(c["model"], str(c["images"]), c["layers"], index, weights=str(c["weights"]), name=c["name"],
                   preprocessing=c["preprocessing"], params=IngestParams(batch_size=c["batch"], workers=2),
                   progress=False)
            print(f"{name}: ingest {time.perf_counter() - t0:.1f} s")
        forward, n = forward_seconds(index)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "neuronindex_cli", "dissect", str(index), "--concepts", "colour",
                              "-q"], capture_output=True, text=True)
        whole = time.perf_counter() - t0
        if out.returncode:
            sys.exit(out.stderr)
        print(f"\n== {name}: {c['layers']} over {n} images")
        print(out.stdout.rstrip())
        print(f"forward (decode, preprocess, forward): {forward:.1f} s; whole `neuronindex dissect`: {whole:.1f} s "
              f"= {whole / forward:.2f}x the forward")
        a = agreement(index)
        print(f"agreement: {a['labelled']} units labelled with a colour concept, {a['colour_selective']} colour selective "
              f"(alpha >= 0.4); {a['both']} both, of which {a['agree']} ({a['agree'] / max(1, a['both']):.0%}) "
              "labelled with their NF's colour name")


if __name__ == "__main__":
    main()
