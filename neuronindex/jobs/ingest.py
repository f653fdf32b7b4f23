"""Ingest: model + images + layers -> an index directory.

  pass 1   stream every image once: per-neuron top-k, moments, sparsity, class means, probe
  pass 2   decode only the images of the top-k lists: receptive-field crops -> Neuron Features
  derive   selectivity indexes and embeddings
  publish  write everything into a staged copy of index.duckdb, then swap it in atomically

Pass 1 checkpoints its state (plain numpy arrays in an .npz, no pickle) under DIR/.work/ every
few minutes; `resume=True` continues from the last checkpoint and ends with results identical
to an uninterrupted run. A run over a shard of the images (`shard=(i, n)`) can save its state
(`state_out`) instead of publishing; `merge_states` folds shards into the result of one run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from neuronindex import store
from neuronindex.data import ImageSet, open_source
from neuronindex.errors import IngestError, UsageError
from neuronindex.jobs import derive as derive_mod
from neuronindex.jobs import visualize as viz
from neuronindex.jobs.categories import build_default
from neuronindex.jobs.derive import remove_stale_spills
from neuronindex.jobs.publish import write_ingest
from neuronindex.jobs.units import extend_results, units_pass
from neuronindex.names import valid_name
from neuronindex.nets.extract import Extractor, image_batches
from neuronindex.nets.layers import ModelGraph, Selection, trace
from neuronindex.nets.models import LoadedModel, Preprocessing, load_model
from neuronindex.science import dictionaries
from neuronindex.science import directions as dirs
from neuronindex.science.dictionaries import DictionarySpec, PositionSample
from neuronindex.science.directions import DirectionSpec
from neuronindex.science.selectivity import dead_neurons, weak_neurons
from neuronindex.science.stats import (
    Covariance,
    LayerStats,
    Pass1State,
    UnitResults,
    split,
)
from neuronindex.settings import default
from neuronindex.store import staged
from neuronindex.store.directory import IndexDirectory
from neuronindex.store.vectors import VectorStore


@dataclass
class IngestParams:
    top_k: int = default("top_k")
    batch_size: int = default("batch_size")
    probe_size: int = default("probe_size")
    curve_len: int = default("curve_len")
    limit: int | None = None
    shard: tuple[int, int] | None = None
    nf_max: int = default("nf_max")
    nf_threshold: float = default("nf_threshold")
    nf_memory: int = default("nf_memory")  # MB of NF planes at once (more neurons: more decodes of their images)
    class_threshold: float = default("class_threshold")
    device: str = "cpu"
    workers: int = 0
    amp: bool = False
    spatial_means: bool = default("spatial_means")  # also class means of each map's spatial mean (Morcos CSI)
    bottom_k: int = default("bottom_k")
    directions: str = default("directions")
    direction_pooling: str = default("direction_pooling")
    svd_rank: str = default("svd_rank")
    svd_max: int = default("svd_max")
    random_directions: int = default("random_directions")
    random_quantile: float = default("random_quantile")
    atoms: int = default("atoms")
    dict_samples: int = default("dict_samples")
    dict_positions: int = default("dict_positions")
    sae_steps: int = default("sae_steps")
    sae_l1: float = default("sae_l1")

    def direction_spec(self):
        return DirectionSpec.parse(self.directions, pooling=self.direction_pooling, svd_rank=self.svd_rank,
                                   svd_max=self.svd_max, random_n=self.random_directions,
                                   random_quantile=self.random_quantile,
                                   dictionary=DictionarySpec(atoms=self.atoms, samples=self.dict_samples,
                                                             positions=self.dict_positions, sae_steps=self.sae_steps,
                                                             sae_l1=self.sae_l1))

    def validate(self):
        if self.top_k < 1:
            raise UsageError("--top-k must be at least 1")
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise UsageError("--limit must be at least 1")
        if self.shard is not None and not (0 <= self.shard[0] < self.shard[1]):
            raise UsageError("--shard is I/N with 0 <= I < N")
        if not 0 < self.nf_threshold <= 1:
            raise UsageError("the NF threshold must be in (0, 1]")
        if self.nf_memory < 1:
            raise UsageError("--nf-memory must be at least 1 (MB)")
        if self.bottom_k < 0:
            raise UsageError("--bottom-k must be 0 or more")
        self.direction_spec()


@dataclass
class Run:
    """Everything an ingest needs, rebuilt identically from `meta` (for resume and merge)."""
    meta: dict
    loaded: LoadedModel
    graph: ModelGraph
    selections: list[Selection]
    images: ImageSet
    params: IngestParams
    problems: dict[int, str] = field(default_factory=dict)
    directions: list = field(default_factory=list)  # per selection: directions.LayerDirections or None

    @property
    def label_names(self) -> list[str]:
        return self.images.leaf_classes

    def key(self, include_shard: bool = True) -> str:
        parts = {
            "model": self.meta["model_fingerprint"], "data": self.meta["data_fingerprint"], "name": self.meta["name"],
            "nodes": [s.layer.name for s in self.selections], "pre": self.meta["preprocessing"],
            "top_k": self.params.top_k, "batch": self.params.batch_size, "probe": self.params.probe_size,
            "limit": self.params.limit, "shard": self.params.shard if include_shard else None,
            "spatial": self.params.spatial_means, "bottom": self.params.bottom_k,
            "cov": self.covariance_pooling(),
        }
        if self.sample_size():  # (only then: the keys of runs without dictionaries stay as they were)
            parts["sample"] = self.sample_size()
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def covariance_pooling(self) -> str | None:
        """The pooling pass 1 accumulates the channel covariance over (None: no directions)."""
        spec = self.params.direction_spec()
        return spec.pooling if spec.kinds else None

    def sample_size(self) -> tuple[int, int] | None:
        """(vectors per layer, positions per image) of the dictionaries' position sample, or None."""
        d = self.params.direction_spec().dictionary
        return (d.samples, d.positions) if d.kinds else None

    def positions(self) -> list[int]:
        n = len(self.images.images)
        if self.params.shard is None:
            return list(range(n))
        i, k = self.params.shard
        return list(range(i, n, k))


def prepare(model, images, layers, *, weights=None, name=None, preprocessing=None, params=None,
            download=False, labels: str = "auto", class_list: str | None = None) -> Run:

    params = params or IngestParams()
    params.validate()
    name = valid_name(name, "model name") if name else None  # before the model is loaded
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights, preprocessing, name)
    if preprocessing is not None:
        loaded.preprocessing = preprocessing
    loaded.name = valid_name(name or loaded.name, "model name")
    image_set = images if isinstance(images, ImageSet) else open_source(images, download=download, labels=labels,
                                                                        class_list=class_list)
    if params.limit is not None:
        image_set = image_set.subset(0, params.limit)
    graph = trace(loaded)
    selections = graph.select(layers)
    for s in selections:
        valid_name(s.name, "layer name")
    meta = {
        "model_spec": loaded.spec, "weights": loaded.weights, "name": loaded.name,
        "preprocessing": loaded.preprocessing.to_json(), "source": image_set.source,
        "labels": image_set.labels, "class_list": image_set.class_list,
        "layers": [s.name for s in selections], "model_fingerprint": loaded.fingerprint(),
        "data_fingerprint": image_set.fingerprint(), "params": asdict(params),
    }
    return Run(meta, loaded, graph, selections, image_set, params)


def run_from_meta(meta: dict, **overrides) -> Run:
    params = IngestParams(**{**meta["params"], **overrides})
    if params.shard is not None:
        params.shard = tuple(params.shard)
    run = prepare(meta["model_spec"], meta["source"], meta["layers"], weights=meta["weights"], name=meta["name"],
                  preprocessing=Preprocessing.from_json(meta["preprocessing"]), params=params,
                  labels=meta.get("labels", "auto"), class_list=meta.get("class_list"))
    if run.meta["model_fingerprint"] != meta["model_fingerprint"]:
        raise IngestError("the model's weights changed since the saved state was written; start a new ingest")
    if run.meta["data_fingerprint"] != meta["data_fingerprint"]:
        raise IngestError("the image collection changed since the saved state was written; start a new ingest")
    return run


# ---------------------------------------------------------------------------- pass 1

def new_state(run: Run) -> Pass1State:
    """One LayerStats over the channels of every selected layer side by side (see
    summaries.Summaries): each batch costs one top-k merge whatever the number of layers; and
    the channel covariance of the pooled activations when SVD or random directions are asked for."""
    p = run.params
    total = sum(s.layer.channels for s in run.selections)
    stats = LayerStats(total, p.top_k, p.curve_len, len(run.label_names), p.probe_size, p.device,
                       p.spatial_means or run.covariance_pooling() == "mean", p.bottom_k)
    channels = [s.layer.channels for s in run.selections]
    cov = Covariance(channels) if run.covariance_pooling() else None
    size = run.sample_size()
    return Pass1State(stats, cov, PositionSample(channels, *size) if size else None)


def pass1(run: Run, state: Pass1State | None = None, done: int = 0, progress: bool = True, checkpoint=None,
          checkpoint_seconds: float = 120.0) -> Pass1State:
    """Stream the run's images (from batch `done` on) through the model into the pass-1 state."""
    import torch

    state = state if state is not None else new_state(run)
    stats = state.stats
    positions = run.positions()
    bs = run.params.batch_size
    todo = positions[done * bs:]
    label_index = {name: i for i, name in enumerate(run.label_names)}
    labels = torch.tensor([label_index.get(r.label, -1) if r.label is not None else -1 for r in run.images.images],
                          dtype=torch.long)
    extractor = Extractor(run.loaded, [s.layer.name for s in run.selections], run.params.device, run.params.amp)
    channels = [s.layer.channels for s in run.selections]
    last = time.monotonic()
    bar = tqdm(total=len(positions), initial=min(done * bs, len(positions)), unit="img", desc="pass 1: activations",
               disable=not progress, dynamic_ncols=True, smoothing=0.1)
    batch_index = done
    for batch, pos, problems in image_batches(run.images, run.loaded.preprocessing, bs, run.params.workers, todo):
        ok = torch.tensor([not p for p in problems], dtype=torch.bool)
        for i, p in enumerate(problems):
            if p:
                run.problems[int(pos[i])] = p
        if bool(ok.any()):
            ids = pos[ok]
            summary = extractor.summaries(batch[ok], stats.threshold(), channels, stats.has_spatial,
                                          stats.low_threshold(), state.sample, ids.numpy())
            stats.add_summary(summary, ids, labels[ids], extractor.spatial_means(), extractor.low_locations())
            if state.cov is not None:
                state.cov.add(summary[0] if run.covariance_pooling() == "max" else extractor.spatial_means())
        batch_index += 1
        bar.update(len(pos))
        if checkpoint is not None and time.monotonic() - last >= checkpoint_seconds:
            checkpoint(state, batch_index)
            last = time.monotonic()
    bar.close()
    return state


def state_bytes(run: Run, state: Pass1State, batches_done: int) -> bytes:
    """The pass-1 state (numpy arrays + JSON meta) as the bytes of an .npz file (no pickle)."""
    arrays = {"__meta__": np.frombuffer(json.dumps({**run.meta, "params": asdict(run.params),
                                                     "batches_done": batches_done,
                                                     "problems": run.problems}).encode(), dtype=np.uint8)}
    arrays.update(state.state_dict())
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_state(path: Path, run: Run, state: Pass1State, batches_done: int) -> None:
    """Atomically write the pass-1 state to `path`."""
    write_atomically(path, state_bytes(run, state, batches_done))


def load_state(path: Path, device: str = "cpu") -> tuple[dict, Pass1State]:
    if not Path(path).is_file():
        raise IngestError(f"state file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            groups = {k.split("/", 1)[0] for k in data.files if "/" in k}
            if groups - {"cov", "sample"} != {"0"}:
                raise IngestError(f"state file {path} was written by an older neuronindex (one state per layer); "
                                  "start the ingest again without --resume")
            state = Pass1State.from_state(data, device)
    except (OSError, ValueError, KeyError) as exc:
        raise IngestError(f"state file {path} is damaged or not a neuronindex state ({exc})") from None
    return meta, state


# ---------------------------------------------------------------------------- orchestration

def ingest(model, images, layers, index_dir, *, weights=None, name=None, preprocessing=None,
           params: IngestParams | None = None, resume: bool = False, progress: bool = True,
           checkpoint_seconds: float = 120.0, state_out: str | None = None, download: bool = False,
           derive: bool = True, labels: str = "auto", class_list: str | None = None, wait: bool = True,
           visualize=None) -> dict:
    """Run an ingest end to end and publish it into `index_dir`; returns a summary dict.

    With `state_out`, only pass 1 runs (typically on a shard) and its mergeable state is saved
    there instead of publishing. `visualize` (optvis.render.VizParams): then optimise an image for
    every neuron of the ingested layers (`neuronindex visualize`), published on its own.
    """
    index_dir = IndexDirectory(index_dir)
    started = time.time()
    run = prepare(model, images, layers, weights=weights, name=name, preprocessing=preprocessing,
                  params=params, download=download, labels=labels, class_list=class_list)
    work = index_dir.run_work(run.key())
    state_file = work / "pass1.npz"
    state, done = None, 0
    if resume and (model := published_as(index_dir, run.key(include_shard=False))) is not None:
        # killed after the publish, before the clean-up: the run is in the index already, once
        return already_published(run, work, model, progress)
    if resume and state_file.is_file():
        meta, state = load_state(state_file, run.params.device)
        done = int(meta["batches_done"])
        run.problems = {int(k): v for k, v in meta.get("problems", {}).items()}
        if progress:
            print(f"resuming from image {min(done * run.params.batch_size, len(run.positions()))} of {len(run.positions())}")
    elif state_file.is_file():
        shutil.rmtree(work)
    t0 = time.time()
    state = pass1(run, state, done, progress,
                  checkpoint=lambda st, b: save_state(state_file, run, st, b),
                  checkpoint_seconds=checkpoint_seconds)
    timings = {"pass1": time.time() - t0}
    if state_out:
        save_state(Path(state_out), run, state, len(run.positions()))
        shutil.rmtree(work, ignore_errors=True)
        return {"state": str(state_out), "images": len(run.positions()), "layers": [s.name for s in run.selections],
                "timings": timings}
    save_state(state_file, run, state, (len(run.positions()) + run.params.batch_size - 1) // run.params.batch_size)
    summary = publish_run(run, state, index_dir, progress=progress, timings=timings, started=started, derive=derive,
                     wait=wait)
    remove_work(work)
    if derive and visualize is not None:
        visualize_after(summary, run, index_dir, visualize, progress, wait)
    return summary


def remove_work(work: Path) -> None:
    """Remove a run's work folder, the spilled patch vectors of runs that died (a kill in pass 2,
    self-response or publish leaves them), and .work when it is left empty."""
    shutil.rmtree(work, ignore_errors=True)
    if work.parent.is_dir():
        remove_stale_spills(work.parent)
    if work.parent.is_dir() and not any(work.parent.iterdir()):
        work.parent.rmdir()


def already_published(run: Run, work: Path, model: str, progress: bool) -> dict:
    """The summary of a --resume of a run that is in the index already (killed after its publish)."""
    remove_work(work)
    if progress:
        print(f"this run was already published as model {model}; nothing to resume")
    return {"model": model, "already_published": True, "layers": [s.name for s in run.selections],
            "images": len(run.positions()), "neurons": sum(s.layer.channels for s in run.selections),
            "problems": 0, "timings": {}}


def visualize_after(summary: dict, run: Run, index_dir, visualize, progress: bool, wait: bool) -> None:
    """`ingest --visualize`: optimise an image for every neuron of the run's layers, then note it in summary."""
    t0 = time.time()
    done = viz.visualize_layers(index_dir, [s.name for s in run.selections], summary["model"], visualize,
                   device=run.params.device, progress=progress, wait=wait)
    summary["visualized"] = done["optimised"]
    summary["timings"]["visualize"] = time.time() - t0


def merge_states(paths: list[str], index_dir, progress: bool = True, derive: bool = True,
                 timings: dict | None = None, wait: bool = True, pass2=None) -> dict:
    """Merge pass-1 states of disjoint shards and publish the combined ingest. The set is checked
    (one run, every shard once) from the files' metadata before any is merged; states are then
    loaded and folded in one at a time, so the driver holds two at most."""
    if len(paths) < 1:
        raise UsageError("merge needs at least one state file")
    started = time.time()
    metas = [read_state_meta(Path(p)) for p in paths]
    base = metas[0]
    shards = []
    for meta in metas:
        same = {k: meta[k] for k in ("model_fingerprint", "data_fingerprint", "layers", "preprocessing", "name")}
        if same != {k: base[k] for k in same}:
            raise IngestError("these state files come from different models, images or layers; they cannot be merged")
        local = ("shard", "device", "workers", "amp", "nf_memory")
        differ = sorted(k for k in set(meta["params"]) | set(base["params"])
                        if k not in local and meta["params"].get(k) != base["params"].get(k))
        if differ:
            raise IngestError(f"these state files were made with different settings ({', '.join(differ)}); "
                              "run every shard with the same options")
        shards.append(tuple(meta["params"]["shard"]) if meta["params"]["shard"] else None)
    check_shards(shards)
    run = run_from_meta(base, shard=None)
    merged = None
    for path in paths:
        meta, state = load_state(Path(path))
        if merged is None:
            merged = state
            continue
        if (merged.cov is None) != (state.cov is None):
            raise IngestError("some state files hold the channel covariance (directions) and some do not; "
                              "run every shard with the same --directions")
        merged.merge(state)
    for meta in metas:
        run.problems.update({int(k): v for k, v in meta.get("problems", {}).items()})
    return publish_run(run, merged, IndexDirectory(index_dir), progress=progress,
                  timings={**(timings or {}), "merge": time.time() - started}, started=started, derive=derive, wait=wait,
                  pass2=pass2)


def read_state_meta(path: Path) -> dict:
    """The JSON metadata of a state file, without loading its arrays."""
    if not Path(path).is_file():
        raise IngestError(f"state file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(bytes(data["__meta__"]).decode())
    except (OSError, ValueError, KeyError) as exc:
        raise IngestError(f"state file {path} is damaged or not a neuronindex state ({exc})") from None


def check_shards(shards: list[tuple[int, int] | None]) -> None:
    """A mergeable set of pass-1 states: one unsharded state, or every shard I/N of one N once."""
    if len(set(shards)) != len(shards):
        raise IngestError("two state files cover the same shard; merge each shard once")
    if None in shards:
        if len(shards) > 1:
            raise IngestError("a state of a whole run (made without --shard) cannot be merged with others")
        return
    counts = sorted({n for _, n in shards})
    if len(counts) > 1:
        raise IngestError(f"these state files split the images in different ways ({', '.join(f'/{n}' for n in counts)}); "
                          "merge the shards of one split")
    n = counts[0]
    missing = sorted(set(range(n)) - {i for i, _ in shards})
    if missing:
        listed = ", ".join(f"{i}/{n}" for i in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise IngestError(f"shard{'s' if len(missing) > 1 else ''} {listed} missing: merge all {n} shards "
                          f"(run `neuronindex ingest ... --shard I/{n} --state-out FILE` for each one missing)")


def published_as(index_dir, run_key: str) -> str | None:
    """The model name under which this exact run (same model, name, images, layers, parameters)
    was published into the index, or None."""

    if not IndexDirectory(index_dir).exists():
        return None
    con = store.connect(index_dir)
    try:
        row = con.execute("SELECT m.name FROM ingests i JOIN models m ON m.id = i.model_id WHERE i.run_key = ?",
                          [run_key]).fetchone()
    finally:
        con.close()
    return row[0] if row else None


def layer_results(run: Run, stats: LayerStats) -> list[UnitResults]:
    """Pass 1's results per selected layer, with each channel's dead / weak flags, kind and unit name."""
    results = split(stats.result(), [s.layer.channels for s in run.selections])
    for res in results:
        res.dead = dead_neurons(res.act_max, res.act_std)
        res.weak = weak_neurons(res.act_max)
        res.kind = ["channel"] * len(res.act_max)
        res.unit = [str(c) for c in range(len(res.act_max))]
    return results


def publish_run(run: Run, state: Pass1State, index_dir: IndexDirectory, *, progress: bool, timings: dict, started: float,
                derive: bool = True, wait: bool = True, pass2=None) -> dict:
    """Everything after pass 1: the directions and their units pass, pass 2 and the derived
    properties, the publish (with the category hierarchy) and the FAISS files (`pass2`: see
    derive.run_all)."""
    results = layer_results(run, state.stats)
    t0 = time.time()
    spec = run.params.direction_spec()
    cov = state.cov
    run.directions = dirs.compute(cov, spec, [s.layer.channels for s in run.selections]) \
        if cov is not None else [None] * len(run.selections)
    if state.sample is not None:
        run.directions = learned(run, state, spec, progress)
    if any(d is not None for d in run.directions):
        units = units_pass(run, run.directions, progress=progress)
        for u, d in zip(units, run.directions):
            if u is not None:
                u.dead = dead_neurons(u.act_max, u.act_std)
                u.weak = np.zeros(len(d), dtype=bool)
                u.kind, u.unit = list(d.kinds), list(d.names)
        results = extend_results(results, units)
        timings["directions"] = time.time() - t0
    derived = None
    if derive:

        t0 = time.time()
        derived = derive_mod.run_all(run, results, progress=progress, timings=timings, spill=index_dir.work,
                                     pass2=pass2)
        timings.setdefault("derive", time.time() - t0)
    t0 = time.time()
    with staged(index_dir, wait=wait) as con:
        summary = write_ingest(con, run, results, derived, timings=timings, started=started)
        if derive:  # Dai 2020's category hierarchy at the deepest layer: cheap, from the class means

            build_default(con, summary["model_id"])
    timings["publish"] = time.time() - t0
    if derive:
        t0 = time.time()
        build_vectors(index_dir)
        timings["vectors"] = time.time() - t0
    summary["timings"] = timings
    return summary


def learned(run: Run, state: Pass1State, spec: DirectionSpec, progress: bool) -> list:
    """Each layer's directions with its learned dictionaries' atoms appended (fitted on pass 1's
    position sample; see science/dictionaries)."""
    out = []
    layers = tqdm(list(enumerate(run.selections)), desc="directions: dictionaries", unit="layer",
                  disable=not progress, dynamic_ncols=True)
    for i, sel in layers:
        mean, std, corr, n = state.cov.layer(i)
        fits = dictionaries.fit(state.sample.layer(i), spec.dictionary, sel.layer.channels)
        out.append(dirs.with_atoms(run.directions[i], fits, mean, std, corr, n, spec.pooling))
    return out


def build_vectors(index_dir) -> list[dict]:
    """(Re)build the FAISS files of an index from its `embeddings` rows."""
    con = store.connect(index_dir)
    try:
        return VectorStore(index_dir, con).build_all()
    finally:
        con.close()

