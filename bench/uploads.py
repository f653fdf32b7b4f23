"""Memory of one upload's decode (POST /api/nearest), measured in a fresh process per case.

Cases: an 81 Mpx PNG (solid colour, 258 KB: the attack of issue 38), a 24 Mpx PNG, an 81 Mpx
JPEG. For each: the service's decode (neuronindex.service.common.decode_upload) against a whole
decode as the service did it before (load, EXIF transpose, RGB), the process's peak RSS above
what it held before decoding, and what it still holds afterwards.

    python bench/uploads.py                      # the decode alone, each case in a fresh process
    python bench/uploads.py --index DIR --layer L  # the whole POST /api/nearest on a running service

With --index the service is started on DIR (`neuronindex serve`), warmed with a small upload (the
model, FAISS spaces and imports loaded), and each case is posted whole; the figures are the
server's peak RSS (VmHWM) above its warm RSS and what it holds after the answer.
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
from neuronindex.service.common import decode_upload, give_back_memory
from neuronindex.data import to_rgb
from neuronindex.errors import NeuronIndexError
give_back_memory()

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
            image = to_rgb(im)
    size = image.size
except NeuronIndexError as exc:
    outcome, size = "refused: " + exc.message[:60], None
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
image = None
give_back_memory()
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


def service(index: str, layer: str) -> None:
    """Each case on a server of its own (VmHWM only rises), warmed by a small upload first."""
    folder = Path(tempfile.mkdtemp())
    small = folder / "small.png"
    subprocess.run([sys.executable, "-c", f"from PIL import Image; Image.new('RGB', (64, 64)).save({str(small)!r})"],
                   check=True)
    print(f"{'case':<11} {'status':>6}  {'warm RSS':>9}  {'peak above warm':>15}  {'kept after':>10}")
    for case in CASES:
        path = make(case, folder)
        code, warm, peak, after = _one_upload(index, layer, small, path)
        print(f"{case:<11} {code:>6}  {warm:>6.0f} MB  {peak - warm:>12.0f} MB  {after - warm:>7.0f} MB")


def _one_upload(index: str, layer: str, warm_up: Path, path: Path) -> tuple:
    import socket
    import time
    import urllib.request

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "neuronindex_cli.main", "serve", index, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def status(field: str) -> float:
        with open(f"/proc/{server.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024

    def post(image: Path) -> int:
        return httpx.post(f"{base}/api/nearest", files={"image": (image.name, image.read_bytes())},
                          data={"layer": layer, "k": "5"}, timeout=300).status_code
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/models", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        post(warm_up)
        warm = max(status("VmRSS"), status("VmHWM"))
        code = post(path)
        return code, warm, status("VmHWM"), status("VmRSS")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    if "--index" in sys.argv:
        args = sys.argv[1:]
        service(args[args.index("--index") + 1], args[args.index("--layer") + 1] if "--layer" in args else "all")
        return
    print(f"{'case':<11} {'file':>8}  {'whole decode: peak / kept':>27}  {'service: peak / kept':>22}  outcome")
    folder = Path(tempfile.mkdtemp())
    for case in CASES:
        path = make(case, folder)
        old, new = run(path, "whole"), run(path, "service")
        print(f"{case:<11} {old['bytes'] / 1024:>6.0f}KB  {old['peak_mb']:>10.0f} MB / {old['after_mb']:>6.0f} MB  "
              f"{new['peak_mb']:>8.0f} MB / {new['after_mb']:>6.0f} MB  {new['outcome']} {new['size'] or ''}")


if __name__ == "__main__":
    main()
