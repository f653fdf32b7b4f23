"""One ingest over many workers on Ray (`neuronindex ingest ... --ray [ADDRESS]`).

Pass 1 is split into N shards of the images (shard I takes every N-th image from I, as
`--shard I/N` does). Each shard is one Ray task: it rebuilds the run from the driver's
metadata (model spec, weights path, image source, parameters), checks that it sees the same
weights and the same image files (fingerprints), reads and decodes its images itself (the driver
never ships pixels), streams them through the model and returns its mergeable pass-1 state as the
bytes of an .npz (top and bottom lists, moments, class sums, probe rows, histograms, covariance,
the dictionaries' position sample).
Ray retries a task whose worker died (`max_retries`); a shard's result does not depend on which
attempt made it, so a retry changes nothing.

The driver saves each returned state under INDEX/.work/<run>/ray-N/ as it arrives, so an
interrupted driver resumes (`--resume`) by running only the shards not yet saved. When all are
in, it folds them together one at a time (`ingest.merge_states`: the same exact merge as
`neuronindex merge`; the result equals a single-process run's).

Pass 2 is split by image (`ray_pass2`): for each range of neurons, one task per worker slot
decodes its part of the top-list images and returns the unfinished NF canvases and sprites of
the range (and, with the first range, the greyscale responses and patch vectors of its crops);
the driver merges them (`features.Canvases.merge`, Chan's pairwise update) and computes what
needs every finished NF itself: self-response, indexes, encoding, the publish.
"""
from __future__ import annotations

import shutil
import time

import numpy as np
from tqdm import tqdm

from neuronindex.errors import NeuronIndexError, UsageError
from neuronindex.jobs.derive import (
    GreyResponses,
    PatchVectors,
    Reforward,
    unit_extractor,
)
from neuronindex.jobs.ingest import (
    already_published,
    merge_states,
    pass1,
    prepare,
    published_as,
    remove_work,
    run_from_meta,
    state_bytes,
    visualize_after,
    write_atomically,
)
from neuronindex.science import features
from neuronindex.store.directory import IndexDirectory

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

    torch.set_num_threads(max(1, threads))
    run = run_from_meta(meta, shard=(shard, shards))
    state = pass1(run, progress=False)
    return state_bytes(run, state, -(-len(run.positions()) // run.params.batch_size))


def pass2_part(meta: dict, directions, plan, owners, neurons: tuple[int, int], subset, threads: int):
    """Pass 2 of the neurons [lo, hi) over one part of the images (`subset`): the unfinished NF
    canvases and sprites, and with `owners` (the plan's (layer, channel) per neuron: the re-forwards
    run) the greyscale responses (per plan entry, NaN where this part saw none) and the patch
    vectors [(entries, vectors, layer)] of its top crops."""
    import torch

    class Patches(Reforward):  # PatchVectors' choice of entries; the vectors go back to the driver
        entries = PatchVectors.entries

        def take(self, e, vectors, li):
            records.append((e, np.ascontiguousarray(vectors[:, :channels[li]], dtype=np.float32), li))

    torch.set_num_threads(max(1, threads))
    run = run_from_meta(meta)
    run.directions = directions
    records: list = []
    grey = on_batch = None
    if owners is not None:  # the first range: the re-forwards too
        channels = [s.layer.channels for s in run.selections]
        selections, extractor = unit_extractor(run)
        grey = GreyResponses(extractor, selections, plan, owners)
        patches = Patches(extractor, selections, plan, owners)
        on_batch = lambda *a: (grey(*a), patches(*a))  # noqa: E731
    canvases = features.compute(plan, run.images, run.loaded.preprocessing, run.params.workers, run.params.batch_size,
                                progress=False, neurons=neurons, on_batch=on_batch, subset=subset, partial=True)
    return canvases.sums, canvases.sprites, (grey.result() if grey is not None else None), records


def ray_pass2(parts: int, cpus_per_worker: float, gpus_per_worker: float):
    """A derive.run_all `pass2` that splits each range of neurons over `parts` Ray tasks by image
    (every part decodes its own images) and merges their canvases, grey responses and patch
    vectors here, in the order they come back (the merge does not depend on it)."""
    shared: dict = {}

    def pass2(run, plan, neurons, reforwards, progress, desc):
        ray = _ray()
        keep = features.needed_entries(plan, neurons, bool(reforwards))
        needed = np.unique(plan.image[keep])
        n = max(1, min(parts, len(needed)))
        if shared.get("plan_of") is not plan:  # the plan goes to the object store once
            shared.update(plan_of=plan, plan=ray.put(plan))
        owners = list(zip(reforwards[0].layer_of.tolist(), reforwards[0].channel_of.tolist())) if reforwards else None
        remote = ray.remote(pass2_part).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                max_retries=MAX_RETRIES, name="neuronindex_pass2")
        pending = {remote.remote(run.meta, run.directions, shared["plan"], owners, neurons, needed[i::n],
                                 max(1, int(cpus_per_worker))): i for i in range(n)}
        canvases = features.Canvases(plan.sizes[neurons[0]:neurons[1]])
        bar = tqdm(total=len(needed), unit="img", desc=f"{desc} on Ray ({n} parts)", disable=not progress,
                   dynamic_ncols=True)
        for i, (sums, sprites, grey, records) in _as_completed(ray, pending, lambda i: f"pass 2 of part {i + 1}/{n}"):
            canvases.merge(sums, sprites)
            if reforwards:
                into_grey, into_patches = reforwards
                seen = np.isfinite(grey)
                into_grey.values[seen] = grey[seen]
                for e, vectors, li in records:
                    into_patches.take(e, vectors, li)
            del sums, sprites, grey, records
            bar.update(len(needed[i::n]))
        bar.close()
        return features.finish_canvases(canvases, plan, neurons)
    return pass2


def _as_completed(ray, pending: dict, what):
    """(i, result) of the tasks `pending` ({ref: i}) as each finishes. A task's own error (a
    NeuronIndexError) is re-raised as itself, any other names the task (`what(i)`); either
    cancels the rest."""
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            for other in pending:
                ray.cancel(other)
            if isinstance(cause, NeuronIndexError):
                raise cause from None
            raise UsageError(f"{what(i)} failed on a Ray worker: {cause or exc}") from None
        yield i, result


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

    ray = _ray()
    if params is not None and params.shard is not None:
        raise UsageError("--ray makes its own shards; leave out --shard")
    if shards is not None and shards < 1:
        raise UsageError("--ray-shards must be at least 1")
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise UsageError("--ray-cpus-per-worker must be > 0 and --ray-gpus-per-worker >= 0")
    index_dir = IndexDirectory(index_dir)
    started = time.time()
    run = prepare(model, images, layers, weights=weights, name=name, preprocessing=preprocessing, params=params,
                  download=download, labels=labels, class_list=class_list)
    work = index_dir.run_work(run.key())
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
        for i, data in _as_completed(ray, pending, lambda i: f"pass 1 of shard {i}/{n}"):
            write_atomically(paths[i], data)
            bar.update(images_of[i])
        bar.close()
        timings = {"pass1": time.time() - t0}
        # pass 2 split the same way: each range of neurons over as many image parts as worker slots
        split = ray_pass2(slots(cpus_per_worker, gpus_per_worker), cpus_per_worker, gpus_per_worker)
        summary = merge_states([str(p) for p in paths], index_dir, progress=progress, derive=derive,
                               timings=timings, wait=wait, pass2=split)
    finally:
        if started_ray:
            ray.shutdown()
    summary["timings"] = {"prepare": t0 - started, **summary["timings"]}
    summary["shards"] = n
    remove_work(work)
    if derive and visualize is not None:
        visualize_after(summary, run, index_dir, visualize, progress, wait)
    return summary
