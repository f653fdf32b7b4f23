"""Query latency on a synthetic index of many neurons: property searches and guarded SQL.

    python bench/query.py [--neurons 200000]

Rows are synthetic (random indexes, classes, colours) but go through the real schema and views.
Prints p50 / p99 per query; the target is p50 < 20 ms at >= 100,000 neurons.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import neuronindex
from neuronindex import store
from neuronindex.store import execute
from neuronindex.science.colornames import TERMS as COLOR_NAMES
from neuronindex.store.writer import insert

QUERIES = ["red conv4", "red-selective conv4 neurons", "dog layer3", "class:beagle gamma>=0.6",
           "color:blue alpha>0.5 sort:-alpha limit:20", "dead layer:conv2", "csi>0.8 model:synthetic"]
SQL = ["SELECT layer, avg(color_index), avg(class_index) FROM neuron_view GROUP BY layer",
       "SELECT key, csi FROM neuron_view WHERE csi > 0.9 ORDER BY csi DESC LIMIT 20"]


def build(directory: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    layer_names = ["conv1", "conv2", "conv3", "conv4", "conv5", "layer3"]
    classes = ["dog", "cat", "beagle", "husky", "ladybug", "car", "truck"] + [f"class{i}" for i in range(93)]
    with store.staged(directory) as con:
        execute(con, "INSERT INTO models (id, name, spec) VALUES (1, 'synthetic', 'synthetic')")
        execute(con, "INSERT INTO datasets (id, name, source) VALUES (1, 'synthetic', 'synthetic')")
        insert(con, "classes", {"id": np.arange(1, len(classes) + 1), "dataset_id": np.ones(len(classes), int),
                                "name": classes, "parent_id": [None, None, 1, 1, None, None, None] + [None] * 93})
        insert(con, "layers", {"id": np.arange(1, 7), "model_id": np.ones(6, int), "name": layer_names,
                               "alias": layer_names, "node": layer_names, "position": np.arange(6), "ingest_id": np.ones(6, int)})
        layer = rng.integers(1, 7, n)
        insert(con, "neurons", {
            "id": np.arange(1, n + 1), "key": [f"synthetic/{layer_names[l - 1]}/{i}" for i, l in enumerate(layer)],
            "model_id": np.ones(n, int), "layer_id": layer, "ingest_id": np.ones(n, int), "channel": np.arange(n),
            "act_max": rng.random(n) * 10, "act_mean": rng.random(n), "sparsity": rng.random(n), "dead": rng.random(n) < 0.02,
            "auc": rng.random(n), "color_index": rng.random(n), "color_name": rng.choice(COLOR_NAMES[3:], n),
            "class_index": rng.random(n), "csi": rng.random(n), "top_class_id": rng.integers(1, len(classes) + 1, n)})
        k = 3
        ids = np.repeat(np.arange(1, n + 1), k)
        first = np.repeat(rng.integers(0, len(classes), n), k)
        distinct = (first + np.tile(np.arange(k), n)) % len(classes) + 1
        insert(con, "neuron_classes", {"neuron_id": ids, "class_id": distinct,
                                       "share": rng.random(n * k), "rank": np.tile(np.arange(1, k + 1), n),
                                       "in_set": np.ones(n * k, bool), "is_leaf": np.ones(n * k, bool)})


def timed(fn, repeats: int):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--neurons", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), args.neurons)
        with neuronindex.open(tmp) as idx:
            print(f"{args.neurons} neurons; p50 / p99 over {args.repeats} runs")
            for q in QUERIES:
                p50, p99 = timed(lambda: idx.search(q), args.repeats)
                print(f"  search {q!r:45} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  ({len(idx.search(q))} rows)")
            for q in SQL:
                p50, p99 = timed(lambda: idx.sql(q), args.repeats)
                print(f"  sql    {q[:45]!r:45} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")


if __name__ == "__main__":
    main()
