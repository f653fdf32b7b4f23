"""Activation maximisation (Dai 2020, section 2, and Øygard 2016): the image a unit, a class or a layer
responds to most, found by gradient ascent on the input with the weights fixed.

Objectives (Dai 2020 eq. 1), each a term  weight * value:
  unit      a unit's value at the centre of its map, so the image covers that unit's receptive
            field (the default for neurons: it is what the NF and the crops show, and its input
            is only the field's window, see `features.crop_geometry`)
  channel   the mean of the unit's whole map (a full-size input)
  layer     the mean of a layer's whole map, all channels
  class     a class logit (pre-softmax), or `prob`: its softmax probability
and sums of these with weights. Directions (Zhang (CS231n)) are units like channels: their map is the
projection w . a + offset, so every unit is a weight vector over its layer's channels.

Images are made natural by (Olah et al. 2017, "Feature Visualization"; Dai 2020, Øygard 2016):
  fourier   the default parameterisation: the image is the inverse FFT of a spectrum whose
            coefficients are scaled by 1/f^decay (so the optimiser moves low frequencies as
            easily as high ones), in decorrelated colour: the three planes are mixed by the square
            root of the RGB covariance of the index's own images (so a step moves natural
            colours, not independent channels), then a sigmoid maps them into [0, 1]
  pixel     the plain RGB pixels (through a sigmoid), with Dai 2020's regularisers: L2 decay of
            the image around mid-grey (Dai 2020's mean-subtracted image, `l2`), total variation (`tv`, squared differences of
            neighbours), and a Gaussian blur of the image every `blur_every` steps (Øygard 2016)
  robustness  before every forward each image is randomly translated (`jitter` px), scaled
            (1 +- `scale`) and rotated (+- `rotate` degrees) by one affine resampling (reflected
            at the border), with both parameterisations
The objective of a neuron is divided by its a_max over the dataset, so the regulariser weights
mean the same on every layer. Adam, `lr`, `steps`. One forward and backward per step runs every
image of a batch (different neurons of one layer), through the network truncated after that layer.

Stored per target: the image (PNG), the objective every 32nd step (`trace`), the final value on
the stored 8-bit image without transformations, and for neurons the activation on that image
(unit: the centre unit; channel: the map's spatial maximum, a neuron's activation in the
index) relative to the neuron's a_max over the dataset: `activation_ratio` >= 1 means the
optimised image drives the neuron at least as hard as its best dataset image.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from neuronindex import store
from neuronindex.data import load_image
from neuronindex.errors import LayerError, NotFoundError, UsageError, did_you_mean
from neuronindex.nets.layers import stored_names, trace
from neuronindex.nets.models import Preprocessing, load_model
from neuronindex.query.reader import Reader
from neuronindex.science.features import crop_geometry
from neuronindex.science.optvis.objectives import SumObjective, map_objective, term
from neuronindex.science.optvis.param import dataset_color
from neuronindex.science.optvis.render import (
    Optimised,
    VizParams,
    color_stats,
    flip_step,
    grad_forward,
    image_seed,
    optimise,
    output_names,
    output_node,
    params_hash,
    png,
    start_params,
)
from neuronindex.settings import default
from neuronindex.store import execute, next_id
from neuronindex.store.writer import insert

MAX_UNNAMED_CLASSES = 32  # --classes dataset takes every output of a model this small when no class matches


# ------------------------------------------------------------------ colour decorrelation


# ------------------------------------------------------------------ image parameterisations


# ------------------------------------------------------------------ objectives


# ------------------------------------------------------------------ the optimisation


# ------------------------------------------------------------------ stored runs

@dataclass
class _Target:
    """One thing to optimise in a stored run."""
    target: str
    objective: str
    neuron_id: int | None = None
    channel: int | None = None
    vector: np.ndarray | None = None
    offset: float = 0.0
    act_max: float | None = None
    output: int | None = None


@dataclass
class _Model:
    id: int
    name: str
    loaded: object
    graph: object
    color: np.ndarray
    extractors: dict = field(default_factory=dict)
    n_outputs: int | None = None

    def forward(self, nodes: tuple, device: str):
        if nodes not in self.extractors:
            self.extractors[nodes] = grad_forward(self.loaded, list(nodes), device)
        return self.extractors[nodes]


def _open_model(idx, name: str, rows) -> _Model:
    spec, weights, pre, model_id = rows
    loaded = load_model(spec, weights, Preprocessing.from_json(pre), name)
    images = []
    for r in idx.rows("SELECT i.path, d.source FROM images i JOIN datasets d ON d.id = i.dataset_id JOIN ingests g "
                       "ON g.dataset_id = d.id WHERE g.model_id = ? ORDER BY i.id LIMIT 64", [model_id]):
        try:
            images.append(loaded.preprocessing.geometric(idx.load_image(r["path"], r["source"])))
        except Exception:  # noqa: BLE001 - an image that moved: the colour matrix uses the others
            continue
    return _Model(model_id, name, loaded, trace(loaded), dataset_color(images))


def _models(idx, model: str | None) -> dict:
    rows = idx.rows("SELECT id, name, spec, weights, preprocessing FROM models ORDER BY id")
    if model is not None:
        names = [r["name"] for r in rows]
        if model not in names:
            raise NotFoundError(f"no model {model!r} in this index{did_you_mean(model, names)}")
        rows = [r for r in rows if r["name"] == model]
    return {r["name"]: (r["spec"], r["weights"], r["preprocessing"], r["id"]) for r in rows}


def _layer_targets(idx, model: str, layers: list[str] | None, objective: str) -> list[tuple]:
    """[(layer row, [targets])] of a model's stored layers (all, or those named), dead units left out."""
    rows = idx.layer_list(model)
    if layers:
        chosen = []
        for name in layers:
            found = [r for r in rows if name in stored_names(r)]
            if not found:

                raise LayerError(f"model {model} has no stored layer {name!r}"
                                 f"{did_you_mean(name, [r['name'] for r in rows])}; its layers: "
                                 f"{', '.join(r['name'] for r in rows)}")
            chosen += [r for r in found if r not in chosen]
        rows = sorted(chosen, key=lambda r: rows.index(r))
    out = []
    for r in rows:
        units = idx.rows("SELECT n.id, n.key, n.channel, n.kind, n.act_max, n.dead, d.weights, d.\"offset\" "
                          "FROM neurons n LEFT JOIN directions d ON d.neuron_id = n.id WHERE n.layer_id = ? "
                          "ORDER BY n.channel", [r["id"]])
        targets = []
        for u in units:
            if u["dead"] or not (u["act_max"] or 0) > 0:
                continue
            vec = None if u["kind"] == "channel" else np.asarray(u["weights"], dtype=np.float64)
            targets.append(_Target(u["key"], objective, u["id"], int(u["channel"]), vec, float(u["offset"] or 0.0),
                                   float(u["act_max"])))
        out.append((r, targets))
    return out


def _class_targets(idx, m: _Model, classes, objective: str = "class") -> list[_Target]:
    """classes: 'dataset' (the index's classes that name an output), a number N (the first N of
    those), or names / output numbers."""
    n_out = _n_outputs(m)
    names = output_names(m.loaded, n_out)
    lower = {n.lower() for n in names}
    if classes == "dataset" or isinstance(classes, int):
        stored = [r["name"] for r in idx.rows(
            "SELECT DISTINCT c.name, c.id FROM classes c JOIN ingests g ON g.dataset_id = c.dataset_id "
            "WHERE g.model_id = ? AND c.is_leaf ORDER BY c.id", [m.id])]
        picked = [n for n in stored if n.lower() in lower]
        if not picked:  # the data's classes name no output (or the data is unlabeled): the outputs
            if classes == "dataset" and n_out > MAX_UNNAMED_CLASSES:
                raise UsageError(f"none of the index's classes names one of {m.name}'s {n_out} outputs; give "
                                 "--classes N (the first N outputs) or class names / output numbers")
            picked = names
        if isinstance(classes, int):
            picked = picked[:classes]
    else:
        picked = list(classes)
    out = []
    for name in picked:
        k = _output_index(str(name), names)
        out.append(_Target(f"class:{names[k]}", objective, output=k))
    return out


def _output_index(name: str, names: list[str]) -> int:
    """The output a class name (any case) or an output number names."""
    lower = {n.lower(): k for k, n in enumerate(names)}
    if name.lower() in lower:
        return lower[name.lower()]
    if name.isdigit() and int(name) < len(names):
        return int(name)
    raise NotFoundError(f"the model has no output class {name!r}{did_you_mean(name, names)}; give a class name "
                        f"or an output number 0..{len(names) - 1}")


def _n_outputs(m: _Model) -> int:
    import torch

    if m.n_outputs is None:
        h, w = m.loaded.preprocessing.input_size
        with torch.no_grad():
            m.n_outputs = int(m.loaded.module(torch.zeros(1, 3, h, w)).flatten(1).shape[1])
    return m.n_outputs


def _run_units(m: _Model, layer, targets: list[_Target], params: VizParams, device: str) -> list[dict]:
    """One batch of one layer's units: optimised, measured, as rows for `visualizations`."""
    import torch

    C = layer.channels
    rectify = all(t.vector is None for t in targets) and layer.pre_activation is not None
    node = layer.pre_activation if rectify else layer.name
    W = torch.zeros(len(targets), C)
    for i, t in enumerate(targets):
        if t.vector is None:
            W[i, t.channel] = 1.0
        else:
            W[i] = torch.as_tensor(t.vector[:C], dtype=torch.float32)
    offsets = torch.tensor([t.offset for t in targets], dtype=torch.float32)
    norm = torch.tensor([t.act_max for t in targets], dtype=torch.float32)
    size_in = m.loaded.preprocessing.input_size
    full = params.objective == "channel" or layer.field is None
    for attempt in ((False, True) if not full else (True,)):
        geo = crop_geometry(layer, size_in, full=attempt)
        obj = map_objective(params.objective, node, W, offsets, geo["at"], norm, rectify)
        try:
            res = optimise(m.forward((node,), device), obj, len(targets), geo["size"], params, m.color, device=device,
                           seeds=[image_seed(params.seed, t.target) for t in targets])
            break
        except (RuntimeError, IndexError):  # the model needs its full input: use it
            if attempt:
                raise
    rows = []
    oy, ox = geo["origin"]
    cy, cx = geo["unit"]
    for i, t in enumerate(targets):
        box = None
        if layer.field is not None and params.objective == "unit":
            f = layer.field if t.vector is None else layer.field.union_all()
            x0, y0, x1, y1 = f.box(t.channel if t.vector is None else 0, cy, cx)
            box = (x0 - ox, y0 - oy, x1 - ox, y1 - oy)
        alpha, hue = color_stats(res.images[i], box)
        rows.append(_row(m, t, res, i, params, geo, box, alpha, hue))
    return rows


def _row(m, t: _Target, res: Optimised, i: int, params, geo, box, alpha=None, hue=None, **extra) -> dict:
    h, w = res.images[i].shape[:2]
    act = float(res.activation[i])
    return {"model_id": m.id, "neuron_id": t.neuron_id, "target": t.target, "objective": t.objective,
            "start": extra.pop("start", None), "image_png": png(res.images[i]), "diff_png": extra.pop("diff_png", None),
            "width": w, "height": h, "origin_x": geo["origin"][1], "origin_y": geo["origin"][0],
            "box_x0": box[0] if box else None, "box_y0": box[1] if box else None,
            "box_x1": box[2] if box else None, "box_y1": box[3] if box else None,
            "trace": [float(v) for v in res.trace[i]], "trace_steps": list(res.trace_steps),
            "objective_value": float(res.value[i]), "activation": act if t.act_max else None,
            "activation_ratio": act / t.act_max if t.act_max else None, "color_index": alpha, "hue": hue,
            "predicted": extra.pop("predicted", None), "probability": extra.pop("probability", None),
            "flip_step": extra.pop("flip_step", None), "steps": params.steps, "seed": params.seed,
            "parameters": json.dumps({**params.key(), "color": np.round(m.color, 6).tolist()}),
            "params_hash": params_hash(params, m.color), "seconds": res.seconds / len(res.images)}


def _run_classes(m: _Model, targets: list[_Target], params: VizParams, device: str) -> list[dict]:
    out_node = output_node(m.loaded)
    obj = SumObjective([[term(t.objective, 1.0, output=t.output)] for t in targets], out_node)
    size = m.loaded.preprocessing.input_size
    res = optimise(m.forward((out_node,), device), obj, len(targets), size, params, m.color, device=device,
                   output_node=out_node, seeds=[image_seed(params.seed, t.target) for t in targets])
    names = output_names(m.loaded, _n_outputs(m))
    geo = {"origin": (0, 0)}
    return [_row(m, t, res, i, params, geo, None, *color_stats(res.images[i]),
                 predicted=names[int(res.predicted[-1][i])], probability=float(res.probabilities[i, t.output]))
            for i, t in enumerate(targets)]


def _done(idx, model_id: int, wanted: dict) -> set:
    """(target, objective) pairs already stored from noise with these parameters (params hash)."""
    rows = idx.rows("SELECT target, objective, params_hash FROM visualizations WHERE model_id = ? AND start IS NULL",
                     [model_id])
    return {(r["target"], r["objective"]) for r in rows if r["params_hash"] == wanted.get(r["objective"])}


def _publish(index_dir, rows: list[dict], wait: bool = True) -> None:
    if not rows:
        return
    with store.staged(index_dir, wait=wait, small=True) as con:
        for r in rows:
            execute(con, "DELETE FROM visualizations WHERE model_id = ? AND target = ? AND objective = ? AND "
                         "start IS NOT DISTINCT FROM ?", [r["model_id"], r["target"], r["objective"], r["start"]])
        base = next_id(con, "visualizations")
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["id"] = list(range(base, base + len(rows)))
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        cols["created"] = [now] * len(rows)
        types = {"image_png": pa.binary(), "diff_png": pa.binary(), "trace": pa.list_(pa.float64()),
                 "trace_steps": pa.list_(pa.int32()), "created": pa.string()}
        insert(con, "visualizations", cols, types)


def visualize_layers(index_dir, layers: list[str] | None = None, model: str | None = None, params: VizParams | None = None,
        classes=None, neurons: bool = True, device: str = "cpu", progress: bool = True,
        checkpoint_every: float = default("viz_checkpoint_every"), wait: bool = True, per_layer: int | None = None,
        class_objective: str = "class") -> dict:
    """Optimise an image for every live neuron (and direction) of the stored layers (all, or those
    named; with `per_layer`, the first N live units of each) and, with `classes`, for class
    logits; store them in the index.

    Resumable and idempotent: targets already stored with the same parameters are skipped, and
    what is done is published every `checkpoint_every` seconds, so an interrupted run loses at
    most that much. Returns counts and the time taken."""

    params = params or VizParams()
    params.validate()
    if isinstance(classes, int) and classes < 1:
        raise UsageError(f"--classes N needs N >= 1, not {classes}")
    if class_objective not in ("class", "prob"):
        raise UsageError(f"a class image maximises its logit (class) or its probability (prob), not {class_objective!r}")
    if per_layer is not None and (not isinstance(per_layer, int) or per_layer < 1):
        raise UsageError(f"--per-layer must be a whole number >= 1, not {per_layer!r}")
    t0 = time.perf_counter()
    done = skipped = 0
    pending: list[dict] = []
    last = time.perf_counter()
    with Reader(index_dir) as idx:
        plan = []
        for name, rows in _models(idx, model).items():
            m = _open_model(idx, name, rows)
            p = params.resolved(m.loaded.preprocessing.input_size)
            pc = VizParams(**{**asdict(p), "objective": class_objective})  # class images
            hashes = {params.objective: params_hash(p, m.color), class_objective: params_hash(pc, m.color)}
            have = _done(idx, m.id, hashes)
            work = []
            if neurons:
                for layer_row, targets in _layer_targets(idx, name, layers, params.objective):
                    targets = targets[:per_layer] if per_layer else targets
                    todo = [t for t in targets if (t.target, t.objective) not in have]
                    skipped += len(targets) - len(todo)
                    layer = m.graph.lookup(layer_row["node"])
                    # channels and directions in batches of their own: channels of a rectified layer
                    # are optimised on its pre-activation, which a direction's projection cannot use
                    for part in ([t for t in todo if t.vector is None], [t for t in todo if t.vector is not None]):
                        if part:
                            work.append((layer, part))
            if classes:
                todo = [t for t in _class_targets(idx, m, classes, class_objective)
                        if (t.target, class_objective) not in have]
                if todo:
                    work.append((None, todo))
            plan.append((m, p, pc, work))
    total = sum(len(t) for _, _, _, work in plan for _, t in work)
    bar = tqdm(total=total, unit="image", desc="visualize", disable=not progress, dynamic_ncols=True)
    for m, p, pc, work in plan:
        for layer, targets in work:
            for s in range(0, len(targets), p.batch_size):
                chunk = targets[s:s + p.batch_size]
                pending += _run_units(m, layer, chunk, p, device) if layer is not None else \
                    _run_classes(m, chunk, pc, device)
                done += len(chunk)
                bar.update(len(chunk))
                if time.perf_counter() - last >= checkpoint_every:
                    _publish(index_dir, pending, wait)
                    pending, last = [], time.perf_counter()
    bar.close()
    _publish(index_dir, pending, wait)
    return {"optimised": done, "skipped": skipped, "seconds": time.perf_counter() - t0,
            "params": {k: v for k, v in asdict(params).items()}}


def from_image(index_dir, image, target: str, model: str | None = None, params: VizParams | None = None,
               objective: str = "class", device: str = "cpu", output=None, wait: bool = True) -> dict:
    """Push a real image towards a class (Dai 2020 section 2.1: make a cat look like a dog to the
    network) and store the result: the final image, the difference image |final - start| (scaled to
    its maximum), and the first step at which the model predicts the target (`flip_step`). Options
    default to `start_params` (plain pixels, small steps, no transformations). `output`: also write
    the image and OUTPUT-diff.png."""
    import torch

    if objective not in ("class", "prob"):
        raise UsageError(f"a start image is pushed towards a class: objective class (logit) or prob, not {objective!r}")
    params = start_params(params or VizParams())
    params.validate()
    path = Path(image)
    if not path.is_file():
        raise NotFoundError(f"no image file {image}; give the path of a picture to start from")
    with Reader(index_dir) as idx:
        models = _models(idx, model)
        if len(models) != 1:
            raise UsageError(f"this index holds {len(models)} models; name one with --model")
        name, rows = next(iter(models.items()))
        m = _open_model(idx, name, rows)
    pre = m.loaded.preprocessing
    seen = np.asarray(pre.geometric(load_image(str(path))), dtype=np.float32) / 255.0
    start = torch.as_tensor(seen).permute(2, 0, 1)[None]
    names = output_names(m.loaded, _n_outputs(m))
    k = _output_index(target[6:] if target.startswith("class:") else target, names)
    out_node = output_node(m.loaded)
    p = params.resolved(pre.input_size)
    obj = SumObjective([[term(objective, 1.0, output=k)]], out_node)
    res = optimise(m.forward((out_node,), device), obj, 1, pre.input_size, p, m.color, start=start, device=device,
                   output_node=out_node)
    diff = np.abs(res.images[0].astype(np.float32) - seen * 255)
    diff = (diff / max(float(diff.max()), 1e-6) * 255).round().astype(np.uint8)
    flips = flip_step(res.predicted[:, 0], k)
    prob = float(res.probabilities[0, k])
    t = _Target(f"class:{names[k]}", objective, output=k)
    row = _row(m, t, res, 0, p, {"origin": (0, 0)}, None, *color_stats(res.images[0]), start=str(path.resolve()),
               diff_png=png(diff), predicted=names[int(res.predicted[-1][0])], probability=prob, flip_step=flips)
    _publish(index_dir, [row], wait)
    if output is not None:
        output = Path(output)
        output.write_bytes(row["image_png"])
        output.with_name(output.stem + "-diff.png").write_bytes(row["diff_png"])
    return {"model": name, "target": t.target, "start": row["start"], "before": names[int(res.predicted[0][0])],
            "after": row["predicted"], "probability": prob, "flip_step": flips, "steps": p.steps}
