"""One ingest over many workers on Ray (`neuronindex ingest ... --ray [ADDRESS]`).

Pass 1 is split into N shards of the images (shard I takes every N-th image from I, as
`--shard I/N` does). Each shard is one Ray task: it rebuilds the run from the driver's
metadata (model spec, weights path, image source, parameters), checks that it sees the same
weights and the same image files (fingerprints), reads and decodes its images itself (the driver
never ships pixels), streams them through the model and returns its mergeable pass-1 state as the
bytes of an .npz (top and bottom lists, moments, class sums, probe rows, histograms, covariance).
Ray retries a task whose worker died (`max_retries`); a shard's result does not depend on which
attempt made it, so a retry changes nothing.

The driver saves each returned state under INDEX/.work/<run>/ray-N/ as it arrives, so an
interrupted driver resumes (`--resume`) by running only the shards not yet saved. When all are
in, it folds them together one at a time (`ingest.merge_states`: the same exact merge as
`neuronindex merge`; the result equals a single-process run's) and runs pass 2, the derived
properties and the publish itself, on its own machine: they need the merged top lists first,
read only the images of those lists, and write the one DuckDB file.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from .errors import NeuronIndexError, UsageError
from .ingest import write_atomically

SHARDS_PER_SLOT = 4  # default shards per worker slot: balance, finer progress, less lost to a failure
MAX_RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'neuronindex[ray]' (or pip install 'ray[default]')") from None
    return ray


def pass1_shard(meta: dict, shard: int, shards: int, threads: int) -> bytes:
    """Pass 1 over shard `shard` of `shards` of the run described by `meta`: its state as .npz bytes."""
    import torch

    from .ingest import pass1, run_from_meta, state_bytes

    torch.set_num_threads(max(1, threads))
    run = run_from_meta(meta, shard=(shard, shards))
    stats = pass1(run, progress=False)
    return state_bytes(run, stats, -(-len(run.positions()) // run.params.batch_size))


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address` ('auto': the one running here) or start a local instance.
    True when this call started Ray (so the caller shuts it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address!r} ({exc}); start one with `ray start --head` "
                         "or leave out the address for a local instance") from None
    return True


def slots(cpus_per_worker: float, gpus_per_worker: float) -> int:
    """How many shard tasks the cluster can run at once with these resources per task."""
    total = _ray().cluster_resources()
    if gpus_per_worker > 0:
        if total.get("GPU", 0) < gpus_per_worker:
            raise UsageError(f"the Ray cluster has {total.get('GPU', 0):g} GPUs; --ray-gpus-per-worker "
                             f"{gpus_per_worker:g} cannot be placed (use 0 for CPU workers)")
        return max(1, int(total["GPU"] // gpus_per_worker))
    if total.get("CPU", 0) < cpus_per_worker:
        raise UsageError(f"the Ray cluster has {total.get('CPU', 0):g} CPUs; --ray-cpus-per-worker "
                         f"{cpus_per_worker:g} cannot be placed")
    return max(1, int(total["CPU"] // cpus_per_worker))


def ingest_on_ray(model, images, layers, index_dir, *, address: str | None = None, shards: int | None = None,
                  cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, weights=None, name=None,
                  preprocessing=None, params=None, resume: bool = False, progress: bool = True, download: bool = False,
                  derive: bool = True, labels: str = "auto", class_list: str | None = None, wait: bool = True,
                  visualize=None, num_cpus: int | None = None) -> dict:
    """`ingest.ingest` with pass 1 spread over Ray tasks (see the module notes); same summary."""
    from tqdm import tqdm

    from .ingest import _work_dir, already_published, merge_states, prepare, published_as, remove_work, visualize_after

    ray = _ray()
    if params is not None and params.shard is not None:
        raise UsageError("--ray makes its own shards; leave out --shard")
    if shards is not None and shards < 1:
        raise UsageError("--ray-shards must be at least 1")
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise UsageError("--ray-cpus-per-worker must be > 0 and --ray-gpus-per-worker >= 0")
    index_dir = Path(index_dir)
    started = time.time()
    run = prepare(model, images, layers, weights=weights, name=name, preprocessing=preprocessing, params=params,
                  download=download, labels=labels, class_list=class_list)
    work = _work_dir(index_dir, run)
    if resume and (done_as := published_as(index_dir, run.key(include_shard=False))) is not None:
        return already_published(run, work, done_as, progress)
    started_ray = connect(address, num_cpus)
    try:
        previous = sorted(work.glob("ray-*")) if work.is_dir() else []
        if resume and previous:
            folder = previous[-1]
            n = int(folder.name.split("-", 1)[1])  # the split the saved shards belong to
        else:
            shutil.rmtree(work, ignore_errors=True)
            n = shards or SHARDS_PER_SLOT * slots(cpus_per_worker, gpus_per_worker)
            n = max(1, min(n, len(run.positions())))
            folder = work / f"ray-{n}"
        paths = [folder / f"shard-{i:05d}-of-{n:05d}.npz" for i in range(n)]
        todo = [i for i in range(n) if not paths[i].is_file()]
        if progress and len(todo) < n:
            print(f"resuming: {n - len(todo)} of {n} shards already done")
        remote = ray.remote(pass1_shard).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                 max_retries=MAX_RETRIES, name="neuronindex_pass1")
        meta = {**run.meta}
        t0 = time.time()
        pending = {remote.remote(meta, i, n, max(1, int(cpus_per_worker))): i for i in todo}
        images_of = {i: len(range(i, len(run.positions()), n)) for i in range(n)}
        bar = tqdm(total=len(run.positions()), initial=sum(images_of[i] for i in range(n) if i not in todo),
                   unit="img", desc=f"pass 1 on Ray ({n} shards)", disable=not progress, dynamic_ncols=True)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                data = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                for ref in pending:
                    ray.cancel(ref)
                if isinstance(cause, NeuronIndexError):
                    raise cause from None
                raise UsageError(f"pass 1 of shard {i}/{n} failed on a Ray worker: {cause or exc}") from None
            write_atomically(paths[i], data)
            bar.update(images_of[i])
        bar.close()
        timings = {"pass1": time.time() - t0}
    finally:
        if started_ray:
            ray.shutdown()
    summary = merge_states([str(p) for p in paths], index_dir, progress=progress, derive=derive, timings=timings,
                           wait=wait)
    summary["timings"] = {"prepare": t0 - started, **summary["timings"]}
    summary["shards"] = n
    remove_work(work)
    if derive and visualize is not None:
        visualize_after(summary, run, index_dir, visualize, progress, wait)
    return summary
