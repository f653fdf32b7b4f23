"""Pictures of one unit on one of its top (or bottom) images, made on demand from the stored image path.

- `context`: the whole image as the model saw it, the unit's activation map over it as a heatmap
  and its receptive field at the stored location as a box. The map is upsampled to the input by
  the receptive-field geometry: unit (i, j) sits at the centre of its field, y0 + s*i + (h-1)/2
  (per-neuron field start y0 and size h, the layer's stride s), and every input pixel takes the
  map bilinearly interpolated at its own position. Colour = activation / a_max (the unit's
  maximum over the dataset), so heatmaps of one unit compare across images.
- `reconstruction` (Yu et al. 2014: the deconvnet of Zeiler & Fergus 2014): the unit's activation at
  the stored location projected back to pixel space. Autograd does the layer-by-layer reversal
  the seed describes (transposed convolutions with the flipped filters; max-pooling through the
  switches recorded in the forward); only the ReLUs' backward is replaced:
    deconvnet  rectify the signal coming down (ignores the forward mask);
    guided     both: rectify the signal and pass it only where the forward input was positive
               (guided backpropagation, Springenberg et al. 2015);
    backprop   the plain gradient (saliency, Simonyan et al. 2014), for comparison.
  Other non-linearities (SiLU, GELU) pass their plain gradient. The result is cropped to the
  receptive field (grey outside the image) and drawn as 0.5 + 0.5 g / max|g| per channel, so
  grey is zero and the brightest pixel is the strongest.

- `concept_overlay` (Network Dissection, Bau et al. 2017): the unit's top concept images of a
  dissection, each with the concept's mask tinted and the unit's thresholded map (upsampled by
  the receptive field, >= its threshold T) outlined: what its IoU counts.

All reuse the loaded model of the index (one per model and layer, `Index._model`) and the
decoded-image cache; the service caches the PNGs per index version.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from neuronindex.errors import NotFoundError, UsageError
from neuronindex.nets.extract import redirect_relus, relu_function
from neuronindex.nets.models import Preprocessing
from neuronindex.query.concepts import concept_source
from neuronindex.science.dissection import upsample

RULES = ("deconvnet", "guided", "backprop")
SIDES = ("top", "bottom")


def _entry(idx, key: str, rank: int, side: str) -> dict:
    """The stored facts needed to redraw a unit on one of its listed images."""
    if side not in SIDES:
        raise UsageError(f"unknown side {side!r}; use top or bottom")
    if not isinstance(rank, int) or rank < 1:
        raise UsageError(f"rank must be a whole number >= 1, not {rank!r}")
    n = idx.neuron_row(key)  # an unknown key: its own message, with suggestions
    table = {"top": "topk", "bottom": "bottomk"}[side]
    cols = ["path", "source", "y", "x", "activation", "box_x0", "box_y0", "box_x1", "box_y1", "model", "node",
            "layer", "channel", "channels", "kind", "rf_h", "rf_w", "rf_y0", "rf_x0", "stride", "act_max"]
    row = idx.con.execute(
        "SELECT i.path, d.source, t.y, t.x, t.activation, t.box_x0, t.box_y0, t.box_x1, t.box_y1, m.name, l.node, "
        "l.name, n.channel, l.channels, n.kind, n.rf_h, n.rf_w, n.rf_y0, n.rf_x0, l.rf_stride, n.act_max "
        f"FROM {table} t JOIN images i ON i.id = t.image_id JOIN datasets d ON d.id = i.dataset_id "
        "JOIN neurons n ON n.id = t.neuron_id JOIN layers l ON l.id = n.layer_id JOIN models m ON m.id = n.model_id "
        "WHERE n.id = ? AND t.rank = ?", [n["id"], rank]).fetchone()
    if row is None:
        count = idx.con.execute(f"SELECT count(*) FROM {table} WHERE neuron_id = ?", [n["id"]]).fetchone()[0]
        raise NotFoundError(f"neuron {key} has no rank {rank} {side} image (it has {count})")
    e = dict(zip(cols, row))
    e["id"] = n["id"]
    if e["kind"] != "channel":
        d = idx.direction_row(n["id"])
        e["weights"], e["offset"] = np.asarray(d["weights"], dtype=np.float32), float(d["offset"] or 0.0)
    return e


def _seen(idx, e: dict) -> np.ndarray:
    """The image as the model saw it, (H, W, 3) uint8, decoded once per opened index."""
    pre = idx.con.execute("SELECT preprocessing FROM models WHERE name = ?", [e["model"]]).fetchone()[0]
    return idx.seen(e["path"], e["source"], pre)


def unit_map(idx, key: str, rank: int, side: str = "top") -> tuple[np.ndarray, dict]:
    """(the unit's activation map on the rank-th image, (H', W') float32; the stored entry). The
    layer's maps of an image are computed once per opened index (its other units reuse them)."""
    e = _entry(idx, key, rank, side)
    maps = _layer_maps(idx, e["model"], e["layer"], e["node"], _seen(idx, e), (e["path"], e["source"]))
    if e["kind"] == "channel":
        return maps[e["channel"]], e
    return np.einsum("c,chw->hw", e["weights"], maps) + e["offset"], e


def context(idx, key: str, rank: int = 1, side: str = "top", alpha: float = 0.55):
    """The whole rank-th image with the unit's heatmap (activation / a_max, clipped to [0, 1]) and
    its receptive field drawn; a PIL RGB image at the model's input size."""
    from matplotlib import colormaps

    amap, e = unit_map(idx, key, rank, side)
    seen = _seen(idx, e)
    h, w = seen.shape[:2]
    if e["rf_h"] is not None and e["stride"]:
        up = upsample(amap, (h, w), (e["rf_y0"], e["rf_x0"]), (e["rf_h"], e["rf_w"]), e["stride"])
    else:  # no receptive-field geometry (a map the tracer could not follow): stretch the map
        up = np.asarray(Image.fromarray(amap).resize((w, h), Image.BILINEAR))
    scale = e["act_max"] if e["act_max"] and e["act_max"] > 0 else max(float(np.abs(amap).max()), 1e-12)
    heat = colormaps["inferno"](np.clip(up / scale, 0, 1))[..., :3]
    grey = seen.mean(2, keepdims=True) / 255.0
    mixed = (1 - alpha) * (0.35 + 0.65 * grey) + alpha * heat
    img = Image.fromarray((np.clip(mixed, 0, 1) * 255).round().astype(np.uint8))
    if e["box_x0"] is not None:
        draw = ImageDraw.Draw(img)
        x0, y0 = max(e["box_x0"], 0), max(e["box_y0"], 0)
        x1, y1 = min(e["box_x1"], w) - 1, min(e["box_y1"], h) - 1
        if x1 >= x0 and y1 >= y0:
            draw.rectangle((x0, y0, x1, y1), outline=(80, 220, 255), width=max(1, round(min(h, w) / 112)))
    return img


def _deconvnet_backward(x, g):
    return g.clamp(min=0)  # rectify the signal coming down; the forward mask is ignored


def _guided_backward(x, g):
    return g.clamp(min=0) * (x > 0)  # rectified signal, and only where the forward input was positive


def _backprop_backward(x, g):
    return g * (x > 0)  # the plain gradient


_BACKWARD = {"deconvnet": _deconvnet_backward, "guided": _guided_backward, "backprop": _backprop_backward}


def _rule_function(rule: str):
    """The ReLU of a backward rule as an autograd Function (values: ReLU's)."""
    return relu_function(f"{rule.capitalize()}ReLU", _BACKWARD[rule])


def deconvnet_relu(x):
    return _rule_function("deconvnet").apply(x)


def guided_relu(x):
    return _rule_function("guided").apply(x)


def backprop_relu(x):
    return _rule_function("backprop").apply(x)


RULE_RELU = {"deconvnet": deconvnet_relu, "guided": guided_relu, "backprop": backprop_relu}


def _rule_module(idx, e: dict, rule: str):
    """(the layer's extractor graph with every ReLU following `rule`, its forward lock), made once
    per opened index, model, layer and rule."""

    net = idx.network(e["model"], e["layer"])
    if net.loaded.scripted:
        raise UsageError(f"{e['model']} is a TorchScript model: its ReLUs cannot be given the {rule} rule; "
                         "load it as a Python or torchvision model")
    module = idx.derived_network(("rule", e["model"], e["node"], rule),
                                 lambda: redirect_relus(net.extractor.module, RULE_RELU[rule]))
    return net.loaded, module, net.lock


def reconstruction_array(idx, key: str, rank: int = 1, side: str = "top", rule: str = "deconvnet") -> tuple[np.ndarray, dict]:
    """(the projection of the unit's activation at its stored location back to the input, (H, W, 3)
    float (gradient with respect to the 0..1 RGB image); the stored entry)."""
    import torch

    if rule not in RULES:
        raise UsageError(f"unknown rule {rule!r}; use deconvnet, guided or backprop")
    e = _entry(idx, key, rank, side)
    if e["y"] is None or e["y"] < 0:
        raise NotFoundError(f"the rank {rank} {side} entry of {key} has no location to project from")
    seen = _seen(idx, e)
    loaded, module, lock = _rule_module(idx, e, rule)
    x01 = torch.from_numpy(seen.astype(np.float32) / 255.0).permute(2, 0, 1)[None].requires_grad_(True)
    with lock, torch.enable_grad():
        out = module(loaded.preprocessing.normalize_float(x01))[e["node"]][0, :, e["y"], e["x"]]
        value = out[e["channel"]] if e["kind"] == "channel" else out @ torch.from_numpy(e["weights"]) + e["offset"]
        (grad,) = torch.autograd.grad(value, x01)
    return grad[0].permute(1, 2, 0).numpy().astype(np.float64), e


def reconstruction(idx, key: str, rank: int = 1, side: str = "top", rule: str = "deconvnet", whole: bool = False):
    """The reconstruction as a PIL RGB image: cropped to the receptive field (whole=False; grey
    outside the image) or over the whole input; grey is zero, 0.5 + 0.5 g / max|g| per channel."""

    g, e = reconstruction_array(idx, key, rank, side, rule)
    peak = float(np.abs(g).max())
    shown = 0.5 + 0.5 * g / peak if peak > 0 else np.full_like(g, 0.5)
    pixels = (np.clip(shown, 0, 1) * 255).round().astype(np.uint8)
    if whole or e["box_x0"] is None:
        return Image.fromarray(pixels)
    h, w = pixels.shape[:2]
    x0, y0, x1, y1 = e["box_x0"], e["box_y0"], e["box_x1"], e["box_y1"]
    out = np.full((y1 - y0, x1 - x0, 3), 128, np.uint8)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = pixels[sy0:sy1, sx0:sx1]
    return Image.fromarray(out)


def _layer_maps(idx, model: str, layer: str, node: str, seen: np.ndarray, key: tuple) -> np.ndarray:
    """The layer's maps (C, H', W') on one image (seen: as the model saw it; key: where it came
    from), computed once per opened index: the layer's other units reuse them."""
    import torch

    net = idx.network(model, layer)

    def forward():
        with net.lock:  # one forward at a time per extractor
            maps = net.extractor(torch.from_numpy(seen.copy())[None])
        return maps[node][0].cpu().numpy().astype(np.float32)

    return idx.cached(("maps", model, node) + key, forward)


def concept_overlay(idx, key: str, concept: str | None = None, n: int = 4, side: int = 128):
    """The unit's top `n` concept images of its dissection with `concept` (default: its best
    concept), each with the concept's mask tinted cyan and the unit's thresholded map outlined
    in yellow; a PIL RGB strip, each image scaled up to at least `side` pixels."""
    if not isinstance(n, int) or not 1 <= n <= 16:
        raise UsageError(f"n must be a whole number from 1 to 16, not {n!r}")
    u = idx.neuron_row(key)
    rows = idx.rows(
        "SELECT c.name, c.category, c.source, x.iou, x.threshold, x.rank, d.id AS dissection_id, d.mask_h, d.mask_w, "
        "m.id AS model_id, m.name AS model, m.preprocessing, l.name AS layer, l.node, l.rf_stride, n.channel, "
        "n.rf_y0, n.rf_x0, n.rf_h, n.rf_w FROM unit_concepts x JOIN concepts c ON c.id = x.concept_id "
        "JOIN dissections d ON d.id = x.dissection_id JOIN neurons n ON n.id = x.neuron_id "
        "JOIN layers l ON l.id = n.layer_id JOIN models m ON m.id = n.model_id WHERE x.neuron_id = ? "
        "ORDER BY x.iou DESC", [u["id"]])
    if not rows:
        raise NotFoundError(f"neuron {key} has no dissection; run neuronindex dissect on its index first")
    chosen = rows[0] if concept is None else next((r for r in rows if r["name"] == concept), None)
    if chosen is None:
        raise NotFoundError(f"{concept!r} is not among the best concepts of {key} "
                            f"({', '.join(dict.fromkeys(r['name'] for r in rows))})")
    images = idx.rows("SELECT path, source FROM dissection_images WHERE dissection_id = ? AND neuron_id = ? "
                      "ORDER BY rank LIMIT ?", [chosen["dissection_id"], u["id"], n])
    src = concept_source(idx, chosen["model_id"], chosen["preprocessing"], chosen["source"])
    cid = next(i for i, (name, cat) in enumerate(zip(src.names, src.concept_categories), 1)
               if name == chosen["name"] and cat == chosen["category"])
    g = src.categories.index(chosen["category"])
    size = (chosen["mask_h"], chosen["mask_w"])
    input_size = tuple(Preprocessing.from_json(chosen["preprocessing"]).input_size)
    tiles = []
    for r in images:
        seen, ann = src.load(src.find(r["path"], r["source"]), size)
        maps = _layer_maps(idx, chosen["model"], chosen["layer"], chosen["node"], seen, (r["path"], r["source"]))
        up = upsample(maps[chosen["channel"]], size, (chosen["rf_y0"], chosen["rf_x0"]), (chosen["rf_h"], chosen["rf_w"]),
                      chosen["rf_stride"], input_size)
        on = up >= chosen["threshold"]
        lab = np.zeros(size, bool)
        for labels in ann.get(g, []):
            lab |= labels == cid
        tiles.append(_overlay(seen, lab, on, side))
    if not tiles:
        raise NotFoundError(f"neuron {key} has no stored concept images")
    gap = 4
    strip = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)),
                      (255, 255, 255))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + gap
    return strip


def _overlay(seen: np.ndarray, concept: np.ndarray, unit: np.ndarray, side: int) -> Image.Image:
    """One image with a concept mask tinted and a unit mask outlined (masks at any resolution)."""
    h, w = seen.shape[:2]
    k = max(1, -(-side // max(h, w)))
    H, W = h * k, w * k

    def fit(mask):
        return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.NEAREST)) > 0

    img = np.asarray(Image.fromarray(seen).resize((W, H), Image.NEAREST), dtype=np.float32)
    lab, on = fit(concept), fit(unit)
    img[lab] = 0.55 * img[lab] + 0.45 * np.array([0, 200, 255], np.float32)
    inner = on.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        inner &= np.roll(on, (dy, dx), (0, 1))
    edge = on & ~inner
    thick = edge.copy()
    for dy, dx in ((1, 0), (0, 1), (1, 1)):
        thick |= np.roll(edge, (dy, dx), (0, 1))
    img[thick & on | edge] = (255, 220, 0)
    return Image.fromarray(img.round().clip(0, 255).astype(np.uint8))
