"""Everything computed after pass 1: pass 2 (crops, Neuron Features), selectivity, embeddings.

`run_all` returns a `Derived`: what pass 2 and the indexes computed, and `Derived.write(con,
stored)` puts it into the staged database during publish, so a run publishes everything or
nothing. `neuronindex.recompute` runs the same steps again on a stored ingest.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from neuronindex.jobs.publish import StoredIngest
from neuronindex.nets.extract import Extractor
from neuronindex.science import features as features_mod
from neuronindex.science import selectivity as sel
from neuronindex.science.directions import Projector, extended_selections
from neuronindex.science.stats import UnitResults
from neuronindex.store import execute
from neuronindex.store import vectors as vec
from neuronindex.store.writer import insert


@dataclass
class Derived:
    """The output of pass 2 and the indexes for one ingest, ready to be written."""
    owners: list  # per neuron: (layer position in the selection, channel)
    plan: object = None  # features.Plan: the top-k entries pass 2 used
    features: list = field(default_factory=list)  # per neuron: NeuronFeature or None
    self_response: np.ndarray | None = None
    indexes: list = field(default_factory=list)  # per neuron: colour, class, CRI, ancestors
    patches: object = None  # PatchVectors
    results: list = field(default_factory=list)  # pass-1 results per layer
    run: object = None
    only: object = None  # neuron indexes to write (None: all); `directions add` writes only its new units

    def write(self, con, stored: StoredIngest) -> None:
        if self.plan is None:  # no receptive fields: nothing was derived
            return
        keep = np.ones(len(self.owners), dtype=bool) if self.only is None else np.isin(np.arange(len(self.owners)), self.only)
        try:
            write_features(con, stored, self.owners, self.features, self.self_response, self.run.params, keep)
            write_indexes(con, stored, self.owners, self.indexes, self.run, keep)
            write_embeddings(con, stored, self.owners, self.plan, self.patches, self.results, self.run.selections,
                             keep)
        finally:
            self.patches.close()


def unit_extractor(run):
    """(the run's selections with its directions as units after the channels, an Extractor over
    them). Directions' maps come from the projector, their fields are the union of the channels';
    the precision is pass 1's (--amp: float16 on CUDA), so that a / a_max compares like with like."""

    directions = run.directions or [None] * len(run.selections)
    nodes = [s.layer.name for s in run.selections]
    return (extended_selections(run.selections, directions),
            Extractor(run.loaded, nodes, run.params.device, run.params.amp, Projector(nodes, directions)))


def local_pass2(run, plan, neurons, reforwards, progress: bool, desc: str) -> list:
    """Pass 2 over one range of neurons in this process: features.compute, with the re-forwards
    (grey responses, patch vectors) fed every decoded batch."""
    on_batch = (lambda *a: [r(*a) for r in reforwards]) if reforwards else None
    return features_mod.compute(plan, run.images, run.loaded.preprocessing, run.params.workers, run.params.batch_size,
                                progress=progress, neurons=neurons, on_batch=on_batch, desc=desc)


def run_all(run, results: list[UnitResults], progress: bool = True, timings: dict | None = None,
            spill: Path | None = None, pass2=None) -> Derived:
    """Pass 2, NF self-response and the indexes of a run's pass-1 results. The patch vectors wait
    in files under `spill` (default: the system's temp folder) until they are written. `pass2`
    replaces local_pass2 (same arguments; distributed.ray_pass2 splits it over Ray workers)."""
    timings = timings if timings is not None else {}
    missing = [s for s in run.selections if s.layer.field is None]
    if missing:

        why = "; ".join(f"{s.name}: {s.layer.field_note or 'TorchScript models have no traced graph'}" for s in missing)
        print(f"no receptive field for {', '.join(s.name for s in missing)} ({why}): Neuron Features, colour and "
              "class indexes and embeddings are skipped; select layers before that operation", file=sys.stderr)
        return Derived(owners=[])
    t0 = time.time()
    selections, extractor = unit_extractor(run)
    plan, owners = features_mod.plan_from_results(selections, results, run.params.nf_threshold, run.params.nf_max)
    grey = GreyResponses(extractor, selections, plan, owners)
    patches = PatchVectors(extractor, selections, plan, owners, [s.layer.channels for s in run.selections], spill)
    act_max_by_layer = [r.act_max for r in results]
    act_max = np.concatenate(act_max_by_layer)
    dead = np.concatenate([r.dead for r in results])
    # The NF planes of all neurons at once grow with neurons x field area (SqueezeNet: 1.1 GB);
    # neurons are taken in ranges within `nf_memory`, each one decode of the images it needs. The
    # first decode also runs the re-forwards (grey responses, patch vectors) for every neuron; each
    # range's NFs are measured (self-response, colour index) and kept as PNGs before the next.
    ranges = features_mod.groups(plan, int(run.params.nf_memory * 2**20))
    feats: list = [None] * len(owners)
    sr = np.full(len(owners), np.nan)
    indexes: list = [None] * len(owners)
    spent = dict.fromkeys(("pass2", "self_response", "indexes", "encode"), 0.0)
    try:
        for g, (lo, hi) in enumerate(ranges):
            first = g == 0
            t0 = time.time()
            part = (pass2 or local_pass2)(run, plan, (lo, hi), (grey, patches) if first else (), progress,
                                          "pass 2: crops" + (f" ({g + 1}/{len(ranges)})" if len(ranges) > 1 else ""))
            if first:
                patches.finish()
            spent["pass2"] += time.time() - t0
            features_mod.release_memory()  # the canvases and the re-forwards' buffers
            t0 = time.time()
            every = [None] * lo + part + [None] * (len(owners) - hi)
            sr[lo:hi] = features_mod.self_response(extractor, selections, owners, every, act_max_by_layer,
                                                   run.loaded.preprocessing, run.params.batch_size,
                                                   progress=progress)[lo:hi]
            spent["self_response"] += time.time() - t0
            t0 = time.time()
            indexes[lo:hi] = compute_indexes(run, plan, owners, every, grey.result(), act_max, dead, range(lo, hi))
            spent["indexes"] += time.time() - t0
            t0 = time.time()
            feats[lo:hi] = features_mod.encode(part)
            del part, every
            spent["encode"] += time.time() - t0
            features_mod.release_memory()
    except BaseException:
        patches.close()
        raise
    timings.update(spent)
    timings["nf_ranges"] = len(ranges)
    return Derived(owners, plan, feats, sr, indexes, patches, results, run)


class Reforward:
    """A pass-2 callback that forwards the decoded images again and takes, at each crop's argmax
    unit, its layer's vector (channels, then directions) through taps in the graph
    (`extract.Extractor.gather`): only the images its entries need go through, and no map is kept."""

    def __init__(self, extractor, selections, plan, owners):
        self.extractor = extractor
        self.nodes = [s.layer.name for s in selections]
        self.plan = plan
        self.layer_of = np.array([li for li, _ in owners], dtype=np.int64)
        self.channel_of = np.array([c for _, c in owners], dtype=np.int64)

    def entries(self, entries, local):
        """The entries this callback needs (and their images' batch indexes)."""
        return entries, local

    def images(self, batch):
        return batch

    def __call__(self, batch, local, entries):
        import torch

        entries, local = self.entries(entries, local)
        if len(entries) == 0:
            return
        needed, local = np.unique(local, return_inverse=True)
        if len(needed) < len(batch):
            batch = batch[torch.from_numpy(needed)]
        layers = self.layer_of[self.plan.neuron[entries]]
        points, groups = {}, []
        for li in np.unique(layers):
            sel = layers == li
            e = entries[sel]
            points[self.nodes[li]] = (torch.from_numpy(local[sel].astype(np.int64)),
                                      torch.from_numpy(self.plan.ys[e].astype(np.int64)),
                                      torch.from_numpy(self.plan.xs[e].astype(np.int64)))
            groups.append((li, e))
        vectors = self.extractor.gather(self.images(batch), points)
        for li, e in groups:
            self.take(e, vectors[self.nodes[li]].cpu().numpy(), li)


def remove_stale_spills(spill: Path) -> list[Path]:
    """Remove the patch-vector folders of runs that died (their process is gone): a killed pass 2,
    self-response or publish leaves them, and the --resume that follows must not keep them."""
    removed = []
    for folder in spill.glob("patches-*"):
        parts = folder.name.split("-")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # still running: another writer's
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif pid == os.getpid():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


class PatchVectors(Reforward):
    """The layer's feature vector (all channels) at each top crop's unit.

    They are appended to one file per layer as they come (SqueezeNet: 400 MB that would otherwise
    be held through pass 2), then `finish` orders each layer's vectors by plan entry, takes the
    prototypes (the w-weighted sum over each neuron's NF crops) and keeps the normalised vectors
    in a .npy file that the publish reads one layer at a time (`rows`)."""

    def __init__(self, extractor, selections, plan, owners, channels, spill: Path | None = None):
        super().__init__(extractor, selections, plan, owners)
        self.channels = list(channels)  # the layer's own channels (directions follow in its vectors)
        if spill is not None:
            Path(spill).mkdir(parents=True, exist_ok=True)
        if spill is not None:
            remove_stale_spills(Path(spill))
        self.dir = Path(tempfile.mkdtemp(prefix=f"patches-{os.getpid()}-", dir=spill))
        self._spill = spill
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        self._files: dict = {}
        self._entries: dict = {}
        self.entries_of: dict = {}  # layer -> plan entries (ascending) of its rows in patch-<layer>.npy
        self.prototypes: dict = {}  # layer -> (neurons, (n, C) normalised prototype vectors)

    def entries(self, entries, local):
        valid = np.isfinite(self.plan.weight[entries])
        return entries[valid], local[valid]

    def take(self, e, vectors, li):
        if li not in self._files:
            self._files[li] = open(self.dir / f"raw-{li}.f32", "wb")
            self._entries[li] = []
        self._files[li].write(np.ascontiguousarray(vectors[:, : self.channels[li]], dtype=np.float32).tobytes())
        self._entries[li].append(e)

    def finish(self) -> None:
        for li, f in self._files.items():
            f.close()
            raw_path = self.dir / f"raw-{li}.f32"
            entries = np.concatenate(self._entries[li])
            raw = np.fromfile(raw_path, dtype=np.float32).reshape(len(entries), self.channels[li])
            raw_path.unlink()
            order = np.argsort(entries, kind="stable")
            entries, raw = entries[order], raw[order]
            nf = self.plan.use_nf[entries]
            if nf.any():  # entries ascend, so each neuron's NF crops are one run of rows
                neurons = self.plan.neuron[entries[nf]]
                starts = np.concatenate([[0], np.nonzero(np.diff(neurons))[0] + 1])
                weighted = self.plan.weight[entries[nf]][:, None] * raw[nf].astype(np.float64)
                self.prototypes[li] = (neurons[starts], vec.normalize(np.add.reduceat(weighted, starts, axis=0)))
                del weighted
            np.save(self.dir / f"patch-{li}.npy", vec.normalize(raw))
            self.entries_of[li] = entries
        self._files.clear()
        self._entries.clear()

    def rows(self, li: int):
        """(plan entries, (n, C) float32 normalised vectors) of layer li's top crops that were seen."""
        if li not in self.entries_of:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.channels[li]), dtype=np.float32)
        return self.entries_of[li], np.load(self.dir / f"patch-{li}.npy")

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._cleanup()
        if self._spill is not None:
            try:
                Path(self._spill).rmdir()  # only when nothing else waits there
            except OSError:
                pass


class GreyResponses(Reforward):
    """Activations at each NF crop's unit when its image is shown in greyscale."""
    def __init__(self, *args):
        super().__init__(*args)
        self.values = np.full(len(self.plan.neuron), np.nan)

    def entries(self, entries, local):
        use = self.plan.use_nf[entries]
        return entries[use], local[use]

    def images(self, batch):
        import torch

        luminance = (batch.float() @ torch.tensor([0.299, 0.587, 0.114])).round().clamp(0, 255).to(torch.uint8)
        return luminance[..., None].expand(*luminance.shape, 3).contiguous()

    def take(self, e, vectors, li):
        self.values[e] = vectors[np.arange(len(e)), self.channel_of[self.plan.neuron[e]]]

    def result(self) -> np.ndarray:
        return self.values


def compute_indexes(run, plan, owners, feats, grey, act_max, dead, neurons=None) -> list[dict]:
    """Colour and class selectivity per neuron of `neurons` (default all; see neuronindex.selectivity).

    grey: per plan entry, the activation on the greyscale image; act_max, dead: per neuron.
    Dead neurons (selectivity.dead_neurons) make no colour or class claims.
    """

    label_of = {r.position: r.label for r in run.images.images}
    order = np.argsort(plan.neuron, kind="stable")
    bounds = np.searchsorted(plan.neuron[order], np.arange(len(owners) + 1))
    out = []
    for n in (range(len(owners)) if neurons is None else neurons):
        if dead[n]:
            out.append({"color": None, "cri": None, "class": sel.ClassSelectivity(None, None, 0, [], 0), "ancestors": {}})
            continue
        top = order[bounds[n]:bounds[n + 1]]
        e = top[plan.use_nf[top]]
        # the class index uses the top N = nf_max images, not only those above the NF threshold:
        # Rafegas et al. 2020, 4.3 ("all the class labels for the N = 100 images that maximally activate")
        top = top[(plan.rank[top] < plan.nf_max) & np.isfinite(plan.weight[top])]
        f = feats[n]
        colour = sel.color_selectivity(f.nf, f.valid, f.std) if f is not None and f.n_used else None
        w = plan.weight[e]
        cri = None
        if len(e) and np.isfinite(grey[e]).all() and act_max[n] > 0:
            # a_j = w_j * a_max, so 1 - sum a_grey / sum a
            cri = 1.0 - float(grey[e].sum() / (act_max[n] * w.sum()))
        cls = sel.class_selectivity([label_of[int(p)] for p in plan.image[top]], plan.weight[top],
                                    run.params.class_threshold)
        out.append({"color": colour, "cri": cri, "class": cls,
                    "ancestors": sel.roll_up(cls.frequencies, run.images.ancestors)})
    return out


def neuron_id_array(stored: StoredIngest, owners) -> np.ndarray:
    return np.array([stored.neuron_ids[li][c] for li, c in owners], dtype=np.int64)


def _forget(con, table: str, ids, where: str = "") -> None:
    """Delete the rows of `table` of the neurons `ids` (about to be written again)."""
    execute(con, "CREATE TEMP TABLE IF NOT EXISTS _rewrite (neuron_id INTEGER)")
    execute(con, "DELETE FROM _rewrite")
    insert(con, "_rewrite", {"neuron_id": np.asarray(ids, dtype=np.int64)})
    execute(con, f"DELETE FROM {table} WHERE neuron_id IN (SELECT neuron_id FROM _rewrite){where}")


def write_features(con, stored: StoredIngest, owners, feats, self_resp, params, keep=None) -> None:
    keep = np.ones(len(owners), dtype=bool) if keep is None else keep
    ids = neuron_id_array(stored, owners)
    _forget(con, "neuron_features", ids[keep])
    feats = [f if k else None for f, k in zip(feats, keep)]

    written = [n for n, f in enumerate(feats) if f is not None]
    for start in range(0, len(written), 256):  # a few hundred rows at a time: no second copy of them all
        rows = {k: [] for k in ("neuron_id", "n_used", "threshold", "nf_max", "height", "width", "nf_png", "std",
                                "crop_std_mean", "sprite_png", "sprite_n", "sprite_thumb")}
        for n in written[start:start + 256]:
            f = feats[n]
            if not isinstance(f, features_mod.StoredFeature):  # a NeuronFeature: encode it here
                f = features_mod.encode([f], threads=1)[0]
            rows["neuron_id"].append(int(ids[n]))
            rows["n_used"].append(f.n_used)
            rows["threshold"].append(float(params.nf_threshold))
            rows["nf_max"].append(int(params.nf_max))
            rows["height"].append(f.shape[0])
            rows["width"].append(f.shape[1])
            rows["nf_png"].append(f.nf_png)
            rows["std"].append(f.std.ravel())
            rows["crop_std_mean"].append(float(np.nanmean(f.std)) if np.isfinite(f.std).any() else None)
            rows["sprite_png"].append(f.sprite_png)
            rows["sprite_n"].append(f.sprite_n)
            rows["sprite_thumb"].append(f.sprite_thumb)
        insert(con, "neuron_features", rows,
               types={"nf_png": pa.binary(), "sprite_png": pa.binary(), "std": pa.list_(pa.float32())})
    n_used = np.array([f.n_used if f is not None else 0 for f in feats])
    execute(con, "CREATE TEMP TABLE IF NOT EXISTS _nf_update (neuron_id INTEGER, nf_n INTEGER, nf_self_response DOUBLE)")
    execute(con, "DELETE FROM _nf_update")
    insert(con, "_nf_update", {"neuron_id": ids[keep], "nf_n": n_used[keep], "nf_self_response": np.asarray(self_resp)[keep]})
    execute(con, "UPDATE neurons SET nf_n = u.nf_n, nf_self_response = u.nf_self_response "
                 "FROM _nf_update u WHERE neurons.id = u.neuron_id")
    execute(con, "UPDATE topk SET in_nf = (norm_activation >= ? AND rank <= ?) "
                 "WHERE neuron_id IN (SELECT neuron_id FROM _nf_update)", [float(params.nf_threshold), int(params.nf_max)])


def write_indexes(con, stored: StoredIngest, owners, indexes: list[dict], run, keep=None) -> None:
    """Selectivity columns of `neurons`, `neuron_colors`, `neuron_classes`, and CSI."""
    keep = np.ones(len(owners), dtype=bool) if keep is None else keep
    ids = neuron_id_array(stored, owners)[keep]
    indexes = [ix for ix, k in zip(indexes, keep) if k]
    ingest_id = stored.ingest_id
    class_id = dict(execute(con, "SELECT c.name, c.id FROM classes c JOIN ingests i ON i.dataset_id = c.dataset_id "
                                 "WHERE i.id = ?", [ingest_id]))
    for table in ("neuron_colors", "neuron_classes"):
        _forget(con, table, ids)
    cols = {k: [] for k in ("neuron_id", "color_index", "hue", "hue_name", "color_name", "color_share", "mean_chroma",
                            "color_second", "color_label",
                            "color_response", "class_index", "class_m", "top_class_id", "top_class_share")}
    colors = {"neuron_id": [], "name": [], "share": []}
    classes = {k: [] for k in ("neuron_id", "class_id", "share", "rank", "in_set", "is_leaf")}
    for nid, ix in zip(ids, indexes):
        c, k = ix["color"], ix["class"]
        cols["neuron_id"].append(int(nid))
        cols["color_index"].append(c.alpha if c else None)
        cols["hue"].append(c.hue if c else None)
        cols["hue_name"].append(c.hue_name if c else None)
        cols["color_name"].append(c.color_name if c else None)
        cols["color_share"].append(c.color_share if c else None)
        cols["color_second"].append(c.second if c else None)
        cols["color_label"].append(c.label if c else None)
        cols["mean_chroma"].append(c.chroma if c else None)
        cols["color_response"].append(ix["cri"])
        cols["class_index"].append(k.gamma)
        cols["class_m"].append(k.m)
        top = k.frequencies[0] if k.frequencies else None
        cols["top_class_id"].append(class_id.get(top[0]) if top else None)
        cols["top_class_share"].append(top[1] if top else None)
        if c:
            for name, share in c.shares.items():
                colors["neuron_id"].append(int(nid))
                colors["name"].append(name)
                colors["share"].append(share)
        for rank, (name, share) in enumerate(k.frequencies, 1):
            for key, value in zip(classes, (int(nid), class_id[name], share, rank, rank <= k.selected, True)):
                classes[key].append(value)
        ranked = sorted(ix["ancestors"].items(), key=lambda kv: (-kv[1], kv[0]))
        for rank, (name, share) in enumerate(ranked, 1):
            if name in class_id:
                for key, value in zip(classes, (int(nid), class_id[name], share, rank, False, False)):
                    classes[key].append(value)
    insert(con, "neuron_colors", colors)
    insert(con, "neuron_classes", classes)
    execute(con, "CREATE TEMP TABLE IF NOT EXISTS _idx_update AS SELECT id AS neuron_id, color_index, hue, hue_name, "
                 "color_name, color_share, mean_chroma, color_second, color_label, color_response, class_index, class_m, top_class_id, top_class_share "
                 "FROM neurons LIMIT 0")
    execute(con, "DELETE FROM _idx_update")
    insert(con, "_idx_update", cols)
    sets = ", ".join(f"{c} = u.{c}" for c in cols if c != "neuron_id")
    execute(con, f"UPDATE neurons SET {sets} FROM _idx_update u WHERE neurons.id = u.neuron_id")
    # CSI from the class-conditional means of pass 1
    # (and, when pass 1 took them, from the class means of each map's spatial mean: Morcos et al.)
    got = con.execute("SELECT m.neuron_id, m.class_id, m.mean_activation, m.mean_spatial FROM class_means m "
                      "JOIN neurons n ON n.id = m.neuron_id WHERE n.ingest_id = ? ORDER BY 1, 2", [ingest_id]).fetchnumpy()
    if len(got["neuron_id"]):  # columns as arrays (NULL as NaN), not 1.3 million Python tuples
        arr = np.column_stack([np.ma.filled(np.ma.asarray(got[c]).astype(float), np.nan)
                               for c in ("neuron_id", "class_id", "mean_activation", "mean_spatial")])
        neuron_ids, inv = np.unique(arr[:, 0].astype(np.int64), return_inverse=True)
        class_ids, cinv = np.unique(arr[:, 1].astype(np.int64), return_inverse=True)
        means = np.full((len(class_ids), len(neuron_ids)), np.nan)
        means[cinv, inv] = arr[:, 2]
        value, top = sel.csi(means)
        spatial = np.full_like(means, np.nan)
        spatial[cinv, inv] = arr[:, 3]
        value_mean = sel.csi(spatial)[0] if np.isfinite(spatial).any() else np.full(len(neuron_ids), np.nan)
        execute(con, "CREATE TEMP TABLE IF NOT EXISTS _csi_update (neuron_id INTEGER, csi DOUBLE, csi_class_id INTEGER, "
                     "csi_mean DOUBLE)")
        execute(con, "DELETE FROM _csi_update")
        insert(con, "_csi_update", {"neuron_id": neuron_ids, "csi": value, "csi_class_id": class_ids[top],
                                    "csi_mean": value_mean})
        execute(con, "UPDATE neurons SET csi = u.csi, csi_class_id = u.csi_class_id, csi_mean = u.csi_mean "
                     "FROM _csi_update u WHERE neurons.id = u.neuron_id")
        execute(con, "UPDATE neurons SET csi = NULL, csi_class_id = NULL, csi_mean = NULL WHERE dead AND ingest_id = ?",
                [ingest_id])


def write_embeddings(con, stored: StoredIngest, owners, plan, patches, results, selections, keep=None) -> None:
    """Prototype, patch and signature vectors into `embeddings`."""
    keep = np.ones(len(owners), dtype=bool) if keep is None else keep
    ids = neuron_id_array(stored, owners)
    ingest_id = stored.ingest_id
    probes = [r.probe for r in results]
    with_signatures = all(p is not None for p in probes) and probes and probes[0].shape[0] >= 2
    # recomputing from a stored index has no probe arrays: its signatures are kept as they are
    spaces = ("patch", "prototype", "signature") if with_signatures else ("patch", "prototype")
    _forget(con, "embeddings", ids[keep], f" AND space IN ({', '.join(repr(s) for s in spaces)})")
    model_id = execute(con, "SELECT model_id FROM ingests WHERE id = ?", [ingest_id])[0][0]
    layer_ids = dict(execute(con, "SELECT position, id FROM layers WHERE ingest_id = ?", [ingest_id]))
    layer_of = [layer_ids[s.layer.position] for s in selections]

    def put(space, lid, nid, rank, vectors):
        n = len(nid)
        insert(con, "embeddings", {
            "space": [space] * n, "model_id": np.full(n, int(model_id), dtype=np.int64),
            "layer_id": np.full(n, lid, dtype=np.int64) if lid is not None else [None] * n,
            "neuron_id": np.asarray(nid, dtype=np.int64), "rank": rank if rank is not None else [None] * n,
            "vector": vectors}, types={"vector": pa.list_(pa.float32())})

    for li in range(len(patches.channels)):  # one layer's vectors in memory at a time
        entries, vectors = patches.rows(li)
        mine = keep[plan.neuron[entries]]
        if mine.any():
            put("patch", layer_of[li], ids[plan.neuron[entries[mine]]], plan.rank[entries[mine]].astype(np.int64) + 1,
                vectors[mine])
        del vectors
        if li in patches.prototypes:
            neurons, protos = patches.prototypes[li]
            mine = keep[neurons]
            if mine.any():
                put("prototype", layer_of[li], ids[neurons[mine]], None, protos[mine])
    if with_signatures:
        signature = vec.signatures(np.concatenate(probes, axis=1))
        chosen = np.nonzero(keep)[0]
        put("signature", None, ids[chosen], None, signature[chosen].astype(np.float32))
