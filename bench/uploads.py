"""Memory of one upload's decode (POST /api/nearest), measured in a fresh process per case.

Cases: an 81 Mpx PNG (solid colour, 258 KB: the attack of issue 38), a 24 Mpx PNG, an 81 Mpx
JPEG. For each: the service's decode (neuronindex.service.common.decode_upload) against a whole
decode as the service did it before (load, EXIF transpose, RGB), the process's peak RSS above
what it held before decoding, and what it still holds afterwards.

    python bench/uploads.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = {"png-81mpx": ("PNG", 9000, 9000), "png-24mpx": ("PNG", 6000, 4000), "jpeg-81mpx": ("JPEG", 9000, 9000)}

CHILD = r"""
import io, json, resource, sys
from PIL import Image
path, how = sys.argv[1], sys.argv[2]
Image.MAX_IMAGE_PIXELS = None
data = open(path, "rb").read()
from neuronindex.service.common import decode_upload, _give_back_memory
from neuronindex.data import _to_rgb
from neuronindex.errors import NeuronIndexError
_give_back_memory()

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

before = rss()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
outcome = "decoded"
try:
    if how == "service":
        image, _ = decode_upload(data)
    else:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            image = _to_rgb(im)
    size = image.size
except NeuronIndexError as exc:
    outcome, size = "refused: " + exc.message[:60], None
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
image = None
_give_back_memory()
print(json.dumps({"bytes": len(data), "size": size, "outcome": outcome,
                  "peak_mb": max(0.0, peak - max(before, peak_before)), "after_mb": rss() - before}))
"""


def make(case: str, folder: Path) -> Path:
    """The test file, written by another process than the one measured."""
    fmt, w, h = CASES[case]
    path = folder / f"{case}.{fmt.lower()}"
    code = (f"from PIL import Image; Image.MAX_IMAGE_PIXELS = None; "
            f"Image.new('RGB', ({w}, {h}), (200, 30, 40)).save({str(path)!r}, {fmt!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


def run(path: Path, how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), how], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"{'case':<11} {'file':>8}  {'whole decode: peak / kept':>27}  {'service: peak / kept':>22}  outcome")
    folder = Path(tempfile.mkdtemp())
    for case in CASES:
        path = make(case, folder)
        old, new = run(path, "whole"), run(path, "service")
        print(f"{case:<11} {old['bytes'] / 1024:>6.0f}KB  {old['peak_mb']:>10.0f} MB / {old['after_mb']:>6.0f} MB  "
              f"{new['peak_mb']:>8.0f} MB / {new['after_mb']:>6.0f} MB  {new['outcome']} {new['size'] or ''}")


if __name__ == "__main__":
    main()
