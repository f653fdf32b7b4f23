"""Learned dictionaries' cost and the comparison the seeds ask for, on the real networks.

For each case (SqueezeNet 1.0 over the 500 ImageNet photos, its nine layers; cifar-resnet20 over
the 4,660 lossless CIFAR-10 training images, every conv layer), runs in one go, each the whole
command a user types (`neuronindex ingest ... -q` as a subprocess, start-up and publish included):

  plain      --directions none: its own `timings: pass1` is the pass 1 every ratio divides by
  atoms      --directions nmf,sae (default settings): extra = atoms - plain, the whole extra cost;
             fit = the seconds of the fits themselves (sum over layers of the dictionaries table)
  compare    --directions svd,nmf,sae (only with --compare): the comparison table of
             `neuronindex directions compare`: per layer neurons vs SVD vs NMF vs SAE on class purity,
             colour, redundancy and R^2 for the same number of units

Target (issue 41): NMF and SAE together <= 1.5x pass 1 at default settings.

    python bench/dictionaries.py                       # needs ../shared/data; ~6 minutes on 2 cores
    python bench/dictionaries.py --case squeezenet --compare
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from directions import SHARED, cases  # bench/ is the script's directory, first on sys.path

TARGET = 1.5


def command(case: dict, index: Path, directions: str) -> list[str]:
    cmd = [sys.executable, "-m", "neuronindex_cli", "ingest", "--model", case["model"], "--weights",
           str(case["weights"]), "--name", case["name"], "--images", str(case["images"]), "--layers", case["layers"],
           "--index", str(index), "--batch-size", str(case["batch"]), "--workers", "2", "--directions", directions, "-q"]
    pre = case["preprocessing"]
    if pre is not None:
        cmd += ["--input-size", *map(str, pre.input_size), "--resize", str(pre.resize), "--mean", *map(str, pre.mean),
                "--std", *map(str, pre.std), "--channel-order", pre.channel_order, "--pixel-scale", str(pre.pixel_scale)]
    return cmd


def timed(case: dict, index: Path, directions: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run(command(case, index, directions), capture_output=True, text=True)
    whole = time.perf_counter() - t0
    if out.returncode:
        sys.exit(out.stderr)
    timings = {k: float(v) for k, v in re.findall(r"(\w+) ([0-9.]+)s", out.stdout.split("timings:")[-1])}
    return whole, timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["squeezenet", "resnet20"], action="append")
    ap.add_argument("--compare", action="store_true", help="also index svd,nmf,sae and print the comparison table")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs the real networks and images")
    import neuronindex
    from neuronindex.formats import to_table

    for name in args.case or ["squeezenet", "resnet20"]:
        c = cases()[name]
        with tempfile.TemporaryDirectory() as tmp:
            plain, t_plain = timed(c, Path(tmp) / "plain", "none")
            atoms, t_atoms = timed(c, Path(tmp) / "atoms", "nmf,sae")
            with neuronindex.open(Path(tmp) / "atoms") as idx:
                fits = idx.dictionary_fits().rows()
            pass1 = t_plain["pass1"]
            fit = sum(f["seconds"] for f in fits)
            extra = atoms - plain
            print(f"\n== {name}: {c['layers']} over {c['images'].name}")
            print(f"pass 1 {pass1:.1f} s; whole ingest --directions none {plain:.1f} s; --directions nmf,sae {atoms:.1f} s")
            print(f"fits ({len(fits)} dictionaries): {fit:.1f} s = {fit / pass1:.2f}x pass 1; "
                  f"directions phase (sample fits + projection pass): {t_atoms.get('directions', 0):.1f} s")
            print(f"whole extra cost of nmf,sae: {extra:.1f} s = {extra / pass1:.2f}x pass 1 (target <= {TARGET}x)")
            print("phases (s), none -> nmf,sae: " + ", ".join(
                f"{k} {t_plain.get(k, 0):.1f} -> {v:.1f}" for k, v in t_atoms.items() if k not in ("nf_ranges", "derive")))
            print(to_table([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in f.items()
                             if k in ("layer", "kind", "atoms", "samples", "r2", "r2_map", "l0", "r2_neurons", "r2_pca",
                                      "seconds")} for f in fits]))
            if args.compare:
                timed(c, Path(tmp) / "compare", "svd,nmf,sae")
                with neuronindex.open(Path(tmp) / "compare") as idx:
                    rows = idx.dictionaries().rows()
                print(to_table([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "model"}
                                for r in rows]))


if __name__ == "__main__":
    main()
