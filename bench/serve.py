"""The service under load over loopback: the JSON and image mix, then the same with one client
looping a slow SQL query, then the mix with the answer cache switched off.

    python bench/serve.py [INDEX_DIR] [--clients 32] [--seconds 20] [--workers 1]

Starts `neuronindex serve` in a subprocess on 127.0.0.1 (fresh for each phase: every phase
starts cold), runs CLIENTS concurrent clients for SECONDS and prints requests/s, p50 / p99 latency
and errors with the issue's targets beside them. Each client loops over a search, a neuron's
JSON, its NF, its crops sprite and one receptive-field crop, moving to the next neuron every
loop (over the 200 strongest). Without INDEX_DIR it uses the demo's index (running the demo
first if needed). The client runs in this process and shares the machine's cores with the server.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time

import aiohttp
import httpx

# a query the time limit stops (5 s by default): every pair of top entries, per class
SLOW_SQL = "SELECT count(*) AS n FROM topk a, topk b, classes c WHERE a.activation * c.id < b.activation"
# the 200 strongest neurons that have an NF and crops (a dead neuron's NF is a 404)
KEYS_SQL = ("SELECT n.key FROM neurons n JOIN neuron_features f ON f.neuron_id = n.id WHERE f.nf_png IS NOT NULL "
            "AND f.sprite_png IS NOT NULL ORDER BY n.act_max DESC, n.id LIMIT 200")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(http, keys, queries, until, latencies, errors, seed, kinds):
    i = seed
    while time.perf_counter() < until:
        key = keys[i % len(keys)]
        for url in (f"/api/search?q={queries[i % len(queries)]}", f"/api/neurons/{key}", f"/api/neurons/{key}/nf.png",
                    f"/api/neurons/{key}/crops.png", f"/api/neurons/{key}/crops/1.png"):
            t0 = time.perf_counter()
            try:
                async with http.get(url) as r:
                    await r.read()
                    if r.status != 200:
                        errors.append(f"{r.status} {url}")
            except aiohttp.ClientError as exc:
                errors.append(f"{type(exc).__name__} {url}")
            latencies.append((time.perf_counter() - t0) * 1000)
            kinds.setdefault(url.split("/")[-1].split("?")[0] if "/neurons/" not in url or url.endswith(".png")
                             else "neuron", []).append(latencies[-1])
        i += 1


async def slow_client(http, until, durations, answers):
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        async with http.post("/api/sql", json={"sql": SLOW_SQL}) as r:
            await r.read()
        durations.append(time.perf_counter() - t0)
        answers.append(r.status)


async def load(base: str, clients: int, seconds: float, slow: bool):
    # aiohttp: httpx's client costs more CPU than the server it measures (one core at 500 requests/s)
    connector = aiohttp.TCPConnector(limit=clients + 1)
    async with aiohttp.ClientSession(base, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.post("/api/sql", json={"sql": KEYS_SQL}) as r:
            keys = [row["key"] for row in (await r.json())["rows"]]
        async with http.get("/api/layers") as r:
            layers = [layer["name"] for layer in (await r.json())["rows"]]
        queries = [f"{name} sort:-alpha limit:20" for name in layers] + ["gamma>=0.9 limit:20", "red limit:20"]
        latencies, errors, durations, answers, kinds = [], [], [], [], {}
        started = time.perf_counter()
        until = started + seconds
        tasks = [client(http, keys, queries, until, latencies, errors, s, kinds) for s in range(clients)]
        if slow:
            tasks.append(slow_client(http, until, durations, answers))
        await asyncio.gather(*tasks)
        return latencies, errors, time.perf_counter() - started, durations, answers, kinds


def phase(index: str, args, slow: bool = False, cache: bool = True) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "neuronindex_cli", "serve", index, "--port", str(port), "--workers", str(args.workers)]
    if not cache:
        command += ["--cache-mb", "0"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(base + "/api/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        latencies, errors, elapsed, durations, answers, kinds = asyncio.run(load(base, args.clients, args.seconds, slow))
    finally:
        server.terminate()
        server.wait(timeout=10)
    latencies.sort()
    return {"requests": len(latencies), "rate": len(latencies) / elapsed, "p50": statistics.median(latencies),
            "p99": latencies[int(0.99 * (len(latencies) - 1))], "errors": errors, "elapsed": elapsed,
            "slow": durations, "slow_status": sorted(set(answers)),
            "kinds": {k: (len(v), sorted(v)[int(0.99 * (len(v) - 1))]) for k, v in kinds.items()}}


def report(name: str, r: dict, targets: bool = True) -> None:
    goal = "  (targets: >= 500 requests/s, p99 < 100 ms, 0 errors)" if targets else ""
    print(f"{name}: {r['requests']} requests in {r['elapsed']:.0f} s, {r['rate']:.0f} requests/s, p50 {r['p50']:.1f} ms, "
          f"p99 {r['p99']:.1f} ms, errors {len(r['errors'])}{goal}")
    print("    p99 by route: " + ", ".join(f"{k} {p99:.0f} ms ({n})" for k, (n, p99) in sorted(r["kinds"].items())))
    for e in r["errors"][:5]:
        print("    ", e)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("index", nargs="?", default=None)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=1, help="server processes (serve --workers)")
    args = parser.parse_args()
    index = args.index
    if index is None:
        from neuronindex.demo import run_demo

        index = str(run_demo("neuronindex-demo", progress=False)["index"])
    print(f"{args.clients} clients, {args.seconds:g} s per phase, server with {args.workers} process(es), index {index}")
    report("mix (cold start, answers cached per version)", phase(index, args))
    slow = phase(index, args, slow=True)
    report("mix while one more client loops a slow SQL query", slow, targets=False)
    print(f"    the other clients' p99 {slow['p99']:.1f} ms (target < 200 ms); the slow query ran {len(slow['slow'])} times, "
          f"{statistics.median(slow['slow']) if slow['slow'] else float('nan'):.1f} s each, answered {slow['slow_status']}")
    report("mix without the answer cache (--cache-mb 0: every request queries the index)", phase(index, args, cache=False),
           targets=False)


if __name__ == "__main__":
    main()
