"""Small publishes on the SqueezeNet index: a copy of the database, or what they change.

Ingests SqueezeNet 1.0 over the 500 ImageNet photos (or reuses --index), then runs the small jobs
a user runs after an ingest, each whole (open the index, compute, publish) through the function
the CLI calls, twice: with the `in_place_publish` setting on (the default: written into the index
in one transaction when no reader has it open) and off (a copy of the index is written and renamed
into place, what every publish did before). Printed per job: seconds, bytes this process wrote
(/proc/self/io write_bytes, so the page cache does not hide the copy) and the ratio of the two.

    python bench/publish.py                 # needs ../shared/data; about 3 minutes on 2 cores
    python bench/publish.py --index /tmp/sq # an existing SqueezeNet index
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from directions import cases  # bench/ is the script's directory, first on sys.path
from neuronindex import settings
from neuronindex.jobs import categories as categories_job
from neuronindex.jobs import maps as maps_job
from neuronindex.jobs.ingest import IngestParams, ingest


def written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def timed(job) -> tuple[float, int]:
    before, t0 = written(), time.perf_counter()
    job()
    os.sync()  # what was written is on its way to the disk before the count is read
    return time.perf_counter() - t0, written() - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="an existing SqueezeNet index (default: ingest one into a temp folder)")
    args = ap.parse_args()
    index = args.index
    if index is None:
        c = cases()["squeezenet"]
        index = Path(tempfile.mkdtemp(prefix="bench-publish-")) / "index"
        t0 = time.perf_counter()
        ingest(c["model"], str(c["images"]), c["layers"], index, weights=str(c["weights"]), name=c["name"],
               preprocessing=c["preprocessing"], params=IngestParams(batch_size=c["batch"], workers=2), progress=False)
        print(f"ingest: {time.perf_counter() - t0:.1f} s")
    size = (index / "index.duckdb").stat().st_size
    print(f"index.duckdb: {size / 2**20:.0f} MB")
    jobs = {
        "categories features.12 (hierarchy)": lambda: categories_job.publish_hierarchy(index, layer="features.12",
                                                                                      pooling="max"),
        "tree --class dog (features.12)": lambda: categories_job.tree(index, "dog", "features.12", max_images=40),
        "map features.3 (neurons, t-SNE)": lambda: maps_job.make_maps(index, ["features.3"], force=True, progress=False),
    }
    print(f"{'job':38s} {'copy s':>7s} {'copy MB':>8s} {'in place s':>10s} {'in place MB':>11s} {'time ratio':>10s}")
    real = settings.BY_NAME["in_place_publish"]
    for name, job in jobs.items():
        job()  # warm: models loaded, files in the page cache, the rows there already (the same rows replaced)
        try:
            settings.BY_NAME["in_place_publish"] = settings.Setting("in_place_publish", False, real.help)
            copy_s, copy_b = timed(job)
        finally:
            settings.BY_NAME["in_place_publish"] = real
        place_s, place_b = timed(job)
        print(f"{name:38s} {copy_s:7.2f} {copy_b / 2**20:8.0f} {place_s:10.2f} {place_b / 2**20:11.1f} "
              f"{copy_s / place_s:9.1f}x")


if __name__ == "__main__":
    main()
