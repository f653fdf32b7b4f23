"""`neuronindex directions add` and `learn`: user directions (concept vectors over a stored layer's
channels) and learned dictionaries' atoms added to an index, with one units pass over the ingest's
images and pass 2 for the new units only (`learn`: a sample pass and the fits first)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from neuronindex import store
from neuronindex.errors import IngestError, NotFoundError, UsageError, did_you_mean
from neuronindex.jobs.derive import run_all
from neuronindex.jobs.ingest import IngestParams, build_vectors, prepare
from neuronindex.jobs.publish import (
    StoredIngest,
    write_dictionaries,
    write_directions,
    write_units,
)
from neuronindex.jobs.units import extend_results, sample_pass, units_pass
from neuronindex.nets.models import Preprocessing
from neuronindex.science import dictionaries
from neuronindex.science.dictionaries import DictionarySpec
from neuronindex.science.directions import (
    LayerDirections,
    extended_field,
    user_direction,
    valid_name,
    with_atoms,
)
from neuronindex.science.selectivity import dead_neurons
from neuronindex.science.stats import UnitResults, units_of
from neuronindex.store import execute, next_id
from neuronindex.store.directory import IndexDirectory


def load_vectors(path: str) -> np.ndarray:
    """A .npy file (C,) or (D, C), or a text file of numbers (one direction per line)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"vector file {path} does not exist")
    try:
        v = np.load(p, allow_pickle=False) if p.suffix == ".npy" else np.loadtxt(p, ndmin=1)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot read {path} as a vector ({exc}); give a .npy array or numbers as text") from None
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.size == 0:
        raise UsageError(f"{path} holds an array of shape {v.shape}; give (channels,) or (directions, channels)")
    return v


@dataclass
class StoredLayer:
    """A stored layer as `add` and `learn` need it: its rows in the index and the run that re-reads its images."""
    model: str
    model_id: int
    layer: str
    layer_id: int
    channels: int
    ingest_id: int
    taken: set
    mean: np.ndarray
    std: np.ndarray
    next_channel: int
    channel_ids: list
    first_image: int
    label_rows: dict
    stored: tuple = ()  # (spec, weights, preprocessing, parameters, source, fingerprints, labels, class list)
    run: object = None
    params: object = None

    def prepare(self) -> None:
        """The run that reads the ingest's images again (loads the model; checks weights and images)."""
        spec, weights, pre, params, source, model_fp, data_fp, labels, class_list = self.stored
        p = json.loads(params)
        p = IngestParams(**{k: v for k, v in p.items() if k in IngestParams.__dataclass_fields__})
        p.shard, p.directions = None, "none"
        labels = labels if labels not in (None, "manifest", "torchvision") else "auto"
        run = prepare(spec, source, [self.layer], weights=weights, name=self.model,
                      preprocessing=Preprocessing.from_json(pre), params=p, labels=labels, class_list=class_list)
        if run.meta["model_fingerprint"] != model_fp:
            raise IngestError(f"the weights of {self.model} ({weights}) changed since it was ingested; ingest it again")
        if run.meta["data_fingerprint"] != data_fp:
            raise IngestError(f"the images of {source} changed since {self.model} was ingested; ingest it again")
        self.run, self.params = run, p


def stored_layer(index_dir, layer: str, model: str | None) -> StoredLayer:
    """A stored layer (LAYER or MODEL/LAYER) as the index holds it (`prepare()` then loads the model)."""
    con = store.connect(index_dir)
    try:
        models = [r[0] for r in execute(con, "SELECT name FROM models ORDER BY id")]
        if model is None and "/" in layer:
            model, layer = layer.split("/", 1)
        if model is None:
            if len(models) != 1:
                raise UsageError(f"this index holds {len(models)} models; name one with --model or MODEL/LAYER")
            model = models[0]
        if model not in models:
            raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, models)}")
        rows = execute(con, "SELECT l.id, l.name, l.channels, i.id, m.spec, m.weights, m.preprocessing, i.parameters, "
                            "d.source, m.fingerprint, d.fingerprint, d.labels, d.class_list, m.id "
                            "FROM layers l JOIN models m ON m.id = l.model_id JOIN ingests i ON i.id = l.ingest_id "
                            "JOIN datasets d ON d.id = i.dataset_id WHERE m.name = ?", [model])
        by_name = {r[1]: r for r in rows}
        if layer not in by_name:
            raise NotFoundError(f"model {model} has no layer {layer!r}{did_you_mean(layer, list(by_name))}; "
                                f"its layers: {', '.join(by_name)}")
        (layer_id, layer_name, C, ingest_id, spec, weights, pre, params, source, model_fp, data_fp, labels,
         class_list, model_id) = by_name[layer]
        taken = {r[0] for r in execute(con, "SELECT unit FROM neurons WHERE layer_id = ?", [layer_id])}
        stats = execute(con, "SELECT act_mean, act_std FROM neurons WHERE layer_id = ? AND kind = 'channel' "
                             "ORDER BY channel", [layer_id])
        next_channel = int(execute(con, "SELECT max(channel) + 1 FROM neurons WHERE layer_id = ?", [layer_id])[0][0])
        existing = execute(con, "SELECT id FROM neurons WHERE layer_id = ? AND kind = 'channel' ORDER BY channel",
                           [layer_id])
        first_image = int(execute(con, "SELECT min(id) - min(position) FROM images WHERE dataset_id = "
                                       "(SELECT dataset_id FROM ingests WHERE id = ?)", [ingest_id])[0][0])
        label_rows = dict(execute(con, "SELECT c.name, c.id FROM classes c JOIN ingests i ON i.dataset_id = c.dataset_id "
                                       "WHERE i.id = ?", [ingest_id]))
    finally:
        con.close()
    return StoredLayer(model, model_id, layer_name, layer_id, C, ingest_id, taken,
                       np.array([r[0] or 0.0 for r in stats]), np.array([r[1] or 0.0 for r in stats]), next_channel,
                       [r[0] for r in existing], first_image, label_rows,
                       (spec, weights, pre, params, source, model_fp, data_fp, labels, class_list))


def add(index_dir, layer: str, vectors: np.ndarray, names: list[str] | None = None, model: str | None = None,
        progress: bool = True, wait: bool = True) -> dict:
    """Index user directions (rows of `vectors`, over the layer's channels) of a stored layer, as
    an ingest does its directions: one pass over the ingest's images for their top and bottom
    lists, then pass 2 and the indexes for the new units only; published atomically."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim == 1:
        vectors = vectors[None]
    found = stored_layer(index_dir, layer, model)
    con = store.connect(index_dir)
    try:
        first_user = 1 + int(execute(con, "SELECT count(*) FROM directions WHERE layer_id = ? AND kind = 'user'",
                                     [found.layer_id])[0][0])
    finally:
        con.close()
    names = list(names) if names else [f"user{first_user + j}" for j in range(len(vectors))]
    if len(names) != len(vectors):
        raise UsageError(f"{len(names)} names for {len(vectors)} vectors; give one name per vector")
    for n in names:
        if not re.fullmatch(r"user\d+", n):
            valid_name(n)
        if n in found.taken:
            raise UsageError(f"layer {found.layer} already has a unit named {n!r}; choose another --name")
    if len(set(names)) != len(names):
        raise UsageError("two vectors have the same name; give each its own")
    basis = np.stack([user_direction(v, found.mean, found.std, found.channels, n) for v, n in zip(vectors, names)])
    found.prepare()
    n_live = int((found.std > 0).sum())
    d = LayerDirections(names, ["user"] * len(names), basis, found.mean, found.std, 0, "max", np.zeros(len(names)),
                        float(n_live), [None] * len(names), list(range(first_user, first_user + len(names))))
    return index_units(index_dir, found, d, progress, wait)


def learn(index_dir, layer: str, kinds: list[str], model: str | None = None, spec: DictionarySpec | None = None,
          progress: bool = True, wait: bool = True) -> dict:
    """Fit learned dictionaries (nmf, sae) on a stored layer and index their atoms: one pass over the
    ingest's images for the position sample (the one an ingest with --directions nmf,sae takes in
    pass 1, so the same dictionaries), the fits, then as `add`."""
    spec = replace(spec or DictionarySpec(), kinds=tuple(dict.fromkeys(kinds)))
    spec.validate()
    if not spec.kinds:
        raise UsageError("name a dictionary kind: --kind nmf or --kind sae")
    found = stored_layer(index_dir, layer, model)
    for kind in spec.kinds:
        if f"{kind}1" in found.taken:
            raise UsageError(f"layer {found.layer} already has {kind} atoms; a layer holds one dictionary of each kind")
    found.prepare()
    sample = sample_pass(found.run, spec, progress=progress)
    fits = dictionaries.fit(sample.layer(0), spec, found.channels)
    d = with_atoms(None, fits, found.mean, found.std, None, 0)
    return index_units(index_dir, found, d, progress, wait)


def index_units(index_dir, found: StoredLayer, d: LayerDirections, progress: bool, wait: bool) -> dict:
    """The directions `d` of a stored layer indexed: their units pass over the ingest's images, pass 2
    and the indexes for the new units only, published atomically."""
    run, p, C = found.run, found.params, found.channels
    run.directions = [d]
    empty = _empty_results(C, p, len(run.label_names))
    units = units_pass(run, [d], progress=progress)[0]
    if units is None:
        raise IngestError("no image of the ingest could be read again; check that its images are still there")

    units.dead = dead_neurons(units.act_max, units.act_std)
    units.weak = np.zeros(len(d), dtype=bool)
    units.kind, units.unit = list(d.kinds), list(d.names)
    d.variance = units.pooled_var.copy()  # w . pooled + b has variance u'Ru for max pooling
    d.n = int(units.count)
    results = extend_results([empty], [units])
    # the images behind the new units (the channels' part of `results` is empty)
    results[0].count, results[0].class_count = units.count, units.class_count
    if units.probe is not None:  # the new units' signatures (the channels' rows stay as stored)
        results[0].probe = np.concatenate([np.zeros((units.probe.shape[0], C), np.float32), units.probe], 1)
        results[0].probe_ids = units.probe_ids
    derived = run_all(run, results, progress=progress, spill=IndexDirectory(index_dir).work)
    derived.only = np.arange(C, C + len(d))
    with store.staged(index_dir, wait=wait) as wcon:

        base = next_id(wcon, "neurons")
        new_ids = np.arange(base, base + len(d))
        label_class_ids = np.array([found.label_rows[n] for n in run.label_names], dtype=np.int64)
        new = np.arange(C, C + len(d))  # the new units in this run's extended map
        field_ = extended_field(run.selections[0].layer.field, len(d))
        channels = np.arange(found.next_channel, found.next_channel + len(d))  # where they go in the stored layer
        write_units(wcon, units_of(results[0], new), new_ids, channels, f"{found.model}/{found.layer}/", found.model_id,
                    found.layer_id, found.ingest_id,
                    field_.rows(new) if field_ is not None else None,
                    found.first_image, label_class_ids)
        write_directions(wcon, new_ids, found.layer_id, d, units.pooled_var)
        write_dictionaries(wcon, found.layer_id, d.fits)
        ids = np.concatenate([np.array(found.channel_ids, dtype=np.int64), new_ids])
        derived.write(wcon, StoredIngest(found.ingest_id, [ids]))
    build_vectors(index_dir)
    return {"model": found.model, "layer": found.layer,
            "directions": [f"{found.model}/{found.layer}/{n}" for n in d.names], "images": int(units.count),
            "fits": [{"kind": f.kind, "atoms": len(f), "r2": f.r2, "l0": f.l0} for f in d.fits]}


def _empty_results(C: int, p, n_classes: int) -> UnitResults:
    """Results of C channels with nothing in them (for runs that only add directions)."""
    k = p.top_k
    return UnitResults(
        count=0, act_max=np.full(C, np.nan), act_mean=np.full(C, np.nan), act_std=np.full(C, np.nan),
        sparsity=np.full(C, np.nan), dead=np.ones(C, dtype=bool), weak=np.zeros(C, dtype=bool),
        curve=np.zeros((C, p.curve_len), np.float32), auc=np.full(C, np.nan),
        class_means=np.full((n_classes, C), np.nan), class_means_spatial=None,
        class_count=np.zeros(n_classes, dtype=np.int64),
        top_values=np.full((C, k), -np.inf), top_ids=np.full((C, k), -1, dtype=np.int64),
        top_y=np.full((C, k), -1, dtype=np.int64), top_x=np.full((C, k), -1, dtype=np.int64),
        probe=None, probe_ids=np.zeros(0, dtype=np.int64),
        bottom_values=np.full((C, 0), np.nan), bottom_ids=np.full((C, 0), -1, dtype=np.int64),
        kind=["channel"] * C, unit=[str(c) for c in range(C)])
