"""A bounded load on the service over loopback: mixed search / neuron / image requests.

    python bench/serve.py [INDEX_DIR] [--clients 32] [--seconds 30]

Starts `neuronindex serve` in a subprocess on 127.0.0.1, runs CLIENTS concurrent clients for
SECONDS (each loop: a search, a neuron's JSON, its NF and its crops), stops by itself, and prints
requests/s, p50 / p99 latency and the error count. Without INDEX_DIR it uses the demo's index
(running the demo first if needed).
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(base: str, keys: list[str], queries: list[str], until: float, latencies: list, errors: list, seed: int):
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        i = seed
        while time.perf_counter() < until:
            key = keys[i % len(keys)]
            for url in (f"/api/search?q={queries[i % len(queries)]}", f"/api/neurons/{key}", f"/api/neurons/{key}/nf.png",
                        f"/api/neurons/{key}/crops.png"):
                t0 = time.perf_counter()
                try:
                    r = await http.get(url)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {url}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__} {url}")
                latencies.append((time.perf_counter() - t0) * 1000)
            i += 1


async def load(base: str, clients: int, seconds: float):
    async with httpx.AsyncClient(base_url=base) as http:
        keys = [r["key"] for r in (await http.get("/api/search", params={"q": "sort:-act_max limit:200"})).json()["rows"]]
        layers = [l["name"] for l in (await http.get("/api/layers")).json()]
    queries = [f"{l} sort:-alpha limit:20" for l in layers] + ["gamma>=0.9 limit:20", "red limit:20"]
    latencies, errors = [], []
    until = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(client(base, keys, queries, until, latencies, errors, s) for s in range(clients)))
    return latencies, errors, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("index", nargs="?", default=None)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    index = args.index
    if index is None:
        from neuronindex.demo import run_demo

        index = str(run_demo("neuronindex-demo", progress=False)["index"])
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "neuronindex_cli", "serve", index, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(base + "/api/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        latencies, errors, elapsed = asyncio.run(load(base, args.clients, args.seconds))
    finally:
        server.terminate()
        server.wait(timeout=10)
    latencies.sort()
    print(f"{args.clients} clients for {elapsed:.0f} s on loopback: {len(latencies)} requests, "
          f"{len(latencies) / elapsed:.0f} requests/s, p50 {statistics.median(latencies):.1f} ms, "
          f"p99 {latencies[int(0.99 * (len(latencies) - 1))]:.1f} ms, errors {len(errors)}")
    for e in errors[:5]:
        print("  ", e)


if __name__ == "__main__":
    main()
