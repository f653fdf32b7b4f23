"""Pass 2: receptive-field crops of each neuron's top images -> Neuron Feature (Rafegas et al. 2020, eq. 1).

Input is a *crop plan*: for every (neuron, rank) of the top-k lists, the image, the receptive-
field box of the argmax unit (in the model's input, possibly crossing the border) and the
relative activation w_j = a_j / a_max. Each needed image is decoded exactly once (grouped by
image, all layers together, in parallel DataLoader workers) and every crop it contributes is
summed straight from the decoded pixels by a compiled loop (numba) on a second thread, while
the next batch decodes. Only the part of a box inside the image is visited: the validity mask
m_j is 1 exactly there, so padding never counts as image content.

  NF(p)   = sum_j w_j m_j(p) I_j(p) / sum_j w_j m_j(p)      over crops with w_j >= threshold,
                                                             at most nf_max of them
  std(p)  = the w-weighted standard deviation of I_j(p) over the valid crops, averaged over the
            colour channels (the colour index weights use it)

(Rafegas et al. 2020 writes (1/N) sum w_j I_j; normalising by the weights instead keeps the NF in the
image's range and lets masked pixels average only what was seen. The ranking of neurons by
any index is unaffected.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from PIL import Image
from tqdm import tqdm

from neuronindex.nets.extract import Extractor, image_batches

SPRITE_CROPS = 12
THUMB_MAX = 48
IN_FLIGHT = 4  # decoded batches waiting for the summing thread
# zlib level of the NF and sprite PNGs: on 400 of SqueezeNet's, level 3 encodes in half the time
# of Pillow's default 6 for 5.6% more bytes (level 1: +7%, hardly faster)
PNG_LEVEL = 3
TRIM_EVERY = 8  # batches between handing freed heap memory back (see _malloc_trim)


@dataclass
class CropPlan:
    neuron: np.ndarray  # (E,) neuron index 0..N-1
    rank: np.ndarray  # (E,) 0-based rank
    image: np.ndarray  # (E,) image position in the image set
    box: np.ndarray  # (E, 4) x0, y0, x1, y1 in model-input pixels
    weight: np.ndarray  # (E,) a_j / a_max
    sizes: np.ndarray  # (N, 2) crop (h, w) per neuron
    ys: np.ndarray | None = None  # (E,) argmax unit, for measures that re-forward the image
    xs: np.ndarray | None = None
    nf_max: int = 100
    threshold: float = 0.7

    def __post_init__(self):
        self.use_nf = (self.weight >= self.threshold) & (self.rank < self.nf_max) & np.isfinite(self.weight)
        self.sprite = self.rank < SPRITE_CROPS

    @property
    def n_neurons(self) -> int:
        return len(self.sizes)


@dataclass
class NeuronFeature:
    nf: np.ndarray  # (h, w, 3) float32 in [0, 255]
    valid: np.ndarray  # (h, w) bool: some crop saw this pixel
    std: np.ndarray  # (h, w) float32: w-weighted std over the crops; NaN where no crop saw the pixel
    n_used: int
    sprite: np.ndarray | None  # (T, S*T, 3) uint8 strip of the top crops
    sprite_n: int

    def png(self) -> bytes:
        return nf_png(self.nf, self.valid)


def nf_png(nf: np.ndarray, valid: np.ndarray) -> bytes:
    rgba = np.concatenate([np.clip(np.rint(nf), 0, 255).astype(np.uint8),
                           (valid * 255).astype(np.uint8)[..., None]], axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def plan_from_results(selections, results, threshold: float, nf_max: int) -> tuple[CropPlan, list[tuple[int, int]]]:
    """A crop plan for a run's pass-1 results; also the (layer, channel) of each neuron index."""
    neurons, ranks, images, boxes, weights, sizes, owners, all_y, all_x = [], [], [], [], [], [], [], [], []
    base = 0
    for li, (sel, res) in enumerate(zip(selections, results)):
        f = sel.layer.field
        if f is None:
            raise ValueError(f"layer {sel.name} has no receptive field; Neuron Features need a traceable model")
        C = sel.layer.channels
        vals, ids = res.top_values, res.top_ids
        ys, xs = res.top_y, res.top_x
        amax = res.act_max
        valid = np.isfinite(vals)
        ch, rk = np.nonzero(valid)
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(amax[ch] > 0, vals[ch, rk] / amax[ch], np.nan)
        neurons.append(base + ch)
        ranks.append(rk)
        images.append(ids[ch, rk])
        boxes.append(f.boxes(ch, ys[ch, rk], xs[ch, rk]))
        weights.append(w)
        all_y.append(ys[ch, rk])
        all_x.append(xs[ch, rk])
        sz = f.sizes().astype(np.int64)
        sizes.append(np.maximum(sz, 1))
        owners += [(li, c) for c in range(C)]
        base += C
    plan = CropPlan(np.concatenate(neurons), np.concatenate(ranks), np.concatenate(images),
                    np.concatenate(boxes).astype(np.int64), np.concatenate(weights), np.concatenate(sizes),
                    ys=np.concatenate(all_y), xs=np.concatenate(all_x), nf_max=nf_max, threshold=threshold)
    return plan, owners


def neuron_bytes(plan: CropPlan) -> np.ndarray:
    """Bytes each neuron holds while its NF is made: the seven float32 canvas planes, the NF, std and
    valid planes it finishes into, and its sprite strip."""
    area = plan.sizes[:, 0] * plan.sizes[:, 1]
    thumb = np.minimum(THUMB_MAX, plan.sizes.max(1))
    return area * (7 * 4 + 4 * 4 + 1) + SPRITE_CROPS * thumb ** 2 * 3


def groups(plan: CropPlan, budget: int) -> list[tuple[int, int]]:
    """Consecutive neuron ranges [lo, hi) whose NF memory (`neuron_bytes`) stays within `budget`
    bytes (a neuron larger than that alone): each range is one decode of the images it needs."""
    cost = neuron_bytes(plan)
    out, lo, used = [], 0, 0
    for n, c in enumerate(cost.tolist()):
        if n > lo and used + c > budget:
            out.append((lo, n))
            lo, used = n, 0
        used += c
    if plan.n_neurons:
        out.append((lo, plan.n_neurons))
    return out


def needed_entries(plan: CropPlan, neurons: tuple[int, int], reforward: bool) -> np.ndarray:
    """Which plan entries pass 2 visits for the neurons [lo, hi): their NF and sprite crops, and
    every valid top crop of every neuron when the re-forwards run (they embed them all)."""
    lo, hi = neurons
    own = (plan.neuron >= lo) & (plan.neuron < hi) & (plan.use_nf | plan.sprite)
    return (own | np.isfinite(plan.weight)) if reforward else own


def compute(plan: CropPlan, images, preprocessing, workers: int = 0, batch_size: int = 64,
            progress: bool = True, on_batch=None, neurons: tuple[int, int] | None = None,
            desc: str = "pass 2: crops", subset=None, partial: bool = False):
    """Decode each needed image once and accumulate the NF, std and sprite of every neuron in
    `neurons` (a range [lo, hi), default all); returns them in that order.

    `on_batch(images_uint8, local_image_index, entries)`, if given, sees every decoded batch with
    the plan entries it serves, of every neuron (e.g. to forward the images again in greyscale).
    `subset` (image positions): only those images (one worker's part of a split pass 2); with
    `partial` the unfinished `Canvases` come back instead, to be merged (`Canvases.merge`) and
    finished (`finish_canvases`) where all parts meet.
    """

    lo, hi = neurons if neurons is not None else (0, plan.n_neurons)
    mine = (plan.neuron >= lo) & (plan.neuron < hi)
    keep = needed_entries(plan, (lo, hi), on_batch is not None)
    if subset is not None:
        keep &= np.isin(plan.image, np.asarray(subset))
    order = np.argsort(plan.image[keep], kind="stable")
    idx = np.nonzero(keep)[0][order]
    e_image = plan.image[idx]
    needed = np.unique(e_image)
    canvases = Canvases(plan.sizes[lo:hi])
    bar = tqdm(total=len(needed), unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
    start = 0
    # the compiled loop releases the GIL: earlier batches' crops are summed on a second thread while
    # the next is decoded (a few batches in flight, so the summing thread never waits on this one)
    with ThreadPoolExecutor(1, thread_name_prefix="pass2") as pool:
        pending: deque = deque()
        batches = 0
        for batch, positions, problems in image_batches(images, preprocessing, batch_size, workers, needed.tolist()):
            pos = positions.numpy()
            end = np.searchsorted(e_image, pos[-1], side="right")
            sel = idx[start:end]
            local = np.searchsorted(pos, e_image[start:end])
            start = end
            if on_batch is not None:
                on_batch(batch, local, sel)
            if len(pending) == IN_FLIGHT:
                pending.popleft().result()
            is_nf, is_sprite = plan.use_nf[sel] & mine[sel], plan.sprite[sel] & mine[sel]
            nf, spr = sel[is_nf], sel[is_sprite]
            pending.append(pool.submit(_add_and_trim, canvases, batch.contiguous().numpy(),
                                       (local[is_nf], plan.box[nf], plan.weight[nf], plan.neuron[nf] - lo),
                                       (local[is_sprite], plan.box[spr], plan.neuron[spr] - lo, plan.rank[spr]),
                                       batches % TRIM_EVERY == TRIM_EVERY - 1))
            batches += 1
            bar.update(len(pos))
        while pending:
            pending.popleft().result()
    bar.close()
    return canvases if partial else finish_canvases(canvases, plan, (lo, hi))


def finish_canvases(canvases: "Canvases", plan: CropPlan, neurons: tuple[int, int]) -> list[NeuronFeature | None]:
    """The NeuronFeatures of the neurons [lo, hi) from their summed canvases."""
    lo, hi = neurons
    mine = (plan.neuron >= lo) & (plan.neuron < hi)
    n_used = np.bincount(plan.neuron[plan.use_nf & mine] - lo, minlength=hi - lo)
    sprite_n = np.bincount(plan.neuron[plan.sprite & mine] - lo, minlength=hi - lo)
    out: list[NeuronFeature | None] = [None] * (hi - lo)
    results = canvases.results()
    del canvases.sums  # the planes are summed up: free them before the sprites are copied out
    for n in np.nonzero((n_used > 0) | (sprite_n > 0))[0]:
        k = int(sprite_n[n])
        out[n] = NeuronFeature(*results[n], int(n_used[n]), canvases.sprite(n, k) if k else None, k)
    return out


@dataclass
class StoredFeature:
    """What publishing needs of a finished NeuronFeature, without its float planes: the NF and
    sprite as PNGs, the std plane (the colour index weights of `recompute`)."""

    nf_png: bytes | None
    std: np.ndarray
    shape: tuple[int, int]
    n_used: int
    sprite_png: bytes | None
    sprite_n: int
    sprite_thumb: int | None


def encode(features: list, threads: int | None = None) -> list:
    """NeuronFeatures -> StoredFeatures (None stays None), PNGs encoded on every core (zlib releases
    the GIL: SqueezeNet's 2,656 NFs and sprites take 18 s on one)."""

    def one(f):
        if f is None:
            return None
        return StoredFeature(f.png() if f.n_used else None, f.std, f.valid.shape, f.n_used,
                             png_bytes(f.sprite) if f.sprite is not None else None, f.sprite_n,
                             int(f.sprite.shape[0]) if f.sprite is not None else None)

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        return list(pool.map(one, features))


def release_memory() -> None:
    """Hand the heap pages freed by a finished phase back to the system (glibc keeps them)."""
    _malloc_trim()(0)


def _add_and_trim(canvases: "Canvases", pixels, crops, thumbnails, trim: bool) -> None:
    canvases.add(pixels, crops, thumbnails)
    if trim:
        _malloc_trim()(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim (a no-op elsewhere): gives freed heap pages back to the system. glibc
    keeps them otherwise, and the re-forwards of the pass-2 callbacks free large maps every batch:
    cifar-resnet56 all-conv peaked at 5.9 GB resident instead of 3.3 GB of live memory."""

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda pad: 0


class Canvases:
    """Every neuron's NF sums and sprite, in two flat buffers (neuron n at its own offset).

    Per canvas pixel (the neuron's receptive-field box) seven planes: W = sum w m, the weighted
    mean of I (RGB) and S = sum w m (I - mean)^2 (RGB), kept by a running (Welford) update.
    Compiled loops add a whole batch's crops at once and visit only the real pixels of each crop
    (a field larger than the image is mostly padding); no crop is copied.
    """

    def __init__(self, sizes: np.ndarray):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        area = self.sizes[:, 0] * self.sizes[:, 1]
        self.start = 7 * np.concatenate([[0], np.cumsum(area)])  # neuron n: seven (h, w) planes from start[n]
        self.sums = np.zeros(self.start[-1], dtype=np.float32)
        self.thumb = np.minimum(THUMB_MAX, self.sizes.max(1))
        # neuron n: a strip (t, SPRITE_CROPS t, 3) of thumbnails from sprite_start[n]
        self.sprite_start = np.concatenate([[0], np.cumsum(SPRITE_CROPS * self.thumb ** 2)])
        self.sprites = np.full((self.sprite_start[-1], 3), 128, dtype=np.uint8)

    def add(self, pixels: np.ndarray, crops, thumbnails):
        """Add one batch: `pixels` (B, H, W, 3) uint8; `crops` (image in batch, box, weight, neuron) of
        the NF crops; `thumbnails` (image in batch, box, neuron, rank) of the sprite crops. Thread-safe
        against decoding (one compiled call without the GIL), not against another `add`."""
        local, box, weight, neuron = crops
        t_local, t_box, t_neuron, t_rank = thumbnails
        t = self.thumb[t_neuron]
        i64 = np.int64
        _add(pixels, np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)),
             local.astype(i64), box[:, 1].astype(i64), box[:, 0].astype(i64), weight.astype(np.float32),
             self.start[neuron], self.sizes[neuron], self.sums,
             t_local.astype(i64), t_box[:, 1].astype(i64), t_box[:, 0].astype(i64), self.sizes[t_neuron], t,
             self.sprite_start[t_neuron] + t_rank.astype(i64) * t, SPRITE_CROPS, self.sprites)

    def merge(self, sums: np.ndarray, sprites: np.ndarray) -> None:
        """Fold in another part's canvases of the same neurons over other images (Chan et al.'s
        pairwise update of the weighted mean and squared deviations; a thumbnail slot is written
        by the one part whose image it shows, so the sprites add by taking what is not blank)."""
        _merge_sums(self.sums, sums, self.start, self.sizes)
        written = (sprites != 128).any(1)
        self.sprites[written] = sprites[written]

    def sprite(self, n: int, k: int) -> np.ndarray:
        """Neuron n's first k thumbnails side by side: (t, k t, 3) uint8."""
        t = int(self.thumb[n])
        strip = self.sprites[self.sprite_start[n]:self.sprite_start[n + 1]].reshape(t, SPRITE_CROPS * t, 3)
        return np.ascontiguousarray(strip[:, :k * t])

    def results(self):
        """Per neuron: NF (h, w, 3), valid (h, w) and std (h, w), float32 (std NaN where unseen)."""
        pixels = self.start[-1] // 7
        nf = np.empty((pixels, 3), dtype=np.float32)
        std = np.empty(pixels, dtype=np.float32)
        _finish(self.sums, self.start, self.sizes, nf, std)
        shapes = [(int(h), int(w)) for h, w in self.sizes]
        at = self.start // 7
        return [(nf[a:b].reshape(*hw, 3), ~np.isnan(std[a:b]).reshape(hw), std[a:b].reshape(hw))
                for a, b, hw in zip(at[:-1], at[1:], shapes)]


def self_response(extractor, selections, owners, features, act_max_by_layer, preprocessing,
                  batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Each neuron's activation on its own NF (placed as the field of a central unit) / a_max.

    The rest of the input is the dataset mean (zero after normalisation). Only the unit's
    receptive field matters, so each layer's neurons are run together through the network
    truncated at that layer, on an input just large enough to hold the layer's largest field and
    aligned to its stride: every unit the central one depends on then sees exactly the pixels it
    sees in a full-size input (`crop_geometry`). Where that smaller forward fails (a model that
    needs its full input size) the full input is used; both give the same value.
    """

    out = np.full(len(owners), np.nan)
    todo = [n for n, f in enumerate(features) if f is not None and f.n_used > 0]
    bar = tqdm(total=len(todo), unit="neuron", desc="NF self-response", disable=not progress, dynamic_ncols=True)
    by_layer: dict[int, list[int]] = {}
    for n in todo:
        by_layer.setdefault(owners[n][0], []).append(n)
    for li, neurons in by_layer.items():
        layer = selections[li].layer
        geometry = crop_geometry(layer, preprocessing.input_size)
        single = Extractor(extractor.loaded, [layer.name], str(extractor.device), extractor.amp, extractor.projector)
        for s in range(0, len(neurons), batch_size):
            chunk = neurons[s:s + batch_size]
            try:
                acts = _nf_forward(single, layer, chunk, owners, features, preprocessing, geometry)
            except (RuntimeError, ValueError):  # the model needs its full input: fall back to it
                geometry = crop_geometry(layer, preprocessing.input_size, full=True)
                acts = _nf_forward(single, layer, chunk, owners, features, preprocessing, geometry)
            for i, n in enumerate(chunk):
                amax = act_max_by_layer[li][owners[n][1]]
                out[n] = float(acts[i]) / amax if amax > 0 else np.nan
            bar.update(len(chunk))
    bar.close()
    return out


def crop_geometry(layer, input_size, full: bool = False) -> dict:
    """Where the central unit (cy, cx) of a layer is, and the input window its NF forward needs.

    Returns {"unit": (cy, cx), "origin": (y, x) of the window in input pixels, "size": (h, w),
    "at": (y, x) of the unit in the window's map}. The window starts on a multiple of the
    layer's stride, so every intermediate map is sampled on the same grid as in the full input,
    and reaches the end of the layer's largest field of the central unit (both within the image)."""
    H, W = input_size
    cy, cx = layer.map_h // 2, layer.map_w // 2
    if full:
        return {"unit": (cy, cx), "origin": (0, 0), "size": (H, W), "at": (cy, cx)}
    f = layer.field
    stride = f.stride.astype(int)
    start = np.array([cy, cx]) * stride + np.nanmin(np.where(np.isfinite(f.start), f.start, np.nan), axis=0)
    end = np.array([cy, cx]) * stride + np.nanmax(np.where(np.isfinite(f.end), f.end, np.nan), axis=0)
    # clipped to the image: where the field crosses the border, the window's edge is the image's,
    # with the same padding; elsewhere the window ends where the field does
    steps = np.maximum(np.floor(start / stride), 0).astype(int)
    origin = steps * stride
    size = (np.minimum(end, [H, W]) - origin).astype(int)
    at = (np.array([cy, cx]) - steps).astype(int)
    return {"unit": (cy, cx), "origin": tuple(int(v) for v in origin), "size": tuple(int(v) for v in size),
            "at": tuple(int(v) for v in at)}


def _nf_forward(extractor, layer, chunk, owners, features, preprocessing, geometry) -> np.ndarray:
    """The activations of `chunk`'s neurons, each on its NF placed in the geometry's window."""
    import torch

    oy, ox = geometry["origin"]
    h, w = geometry["size"]
    H, W = preprocessing.input_size
    cy, cx = geometry["unit"]
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    x = torch.zeros(len(chunk), 3, h, w)
    for i, n in enumerate(chunk):
        c = owners[n][1]
        x0, y0, x1, y1 = layer.field.box(c, cy, cx)
        f = features[n]
        img = torch.from_numpy(np.ascontiguousarray(f.nf)).permute(2, 0, 1) * (preprocessing.pixel_scale / 255.0)
        if preprocessing.channel_order == "bgr":
            img = img.flip(0)
        normed = (img - mean) / std * torch.from_numpy(f.valid.astype(np.float32))
        # the part of the field inside the image (the rest is the mean, zero) and inside the window
        ix0, iy0, ix1, iy1 = max(x0, 0, ox), max(y0, 0, oy), min(x1, W, ox + w), min(y1, H, oy + h)
        if ix1 > ix0 and iy1 > iy0:
            x[i, :, iy0 - oy:iy1 - oy, ix0 - ox:ix1 - ox] = normed[:, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    acts = extractor.forward_normalized(x)[layer.name]
    ay, ax = geometry["at"]
    if not (0 <= ay < acts.shape[2] and 0 <= ax < acts.shape[3]):
        raise ValueError("the window's map does not reach the central unit")
    channels = torch.tensor([owners[n][1] for n in chunk])
    return acts[torch.arange(len(chunk)), channels, ay, ax].cpu().numpy()


@numba.njit(cache=True, nogil=True)
def _add(pixels, planes, local, y0, x0, weight, start, size, sums,
         t_local, t_y0, t_x0, t_size, thumb, at, per_row, sprites):  # pragma: no cover - compiled
    _accumulate(planes, local, y0, x0, weight, start, size, sums)
    _thumbnails(pixels, t_local, t_y0, t_x0, t_size, thumb, at, per_row, sprites)


@numba.njit(cache=True, nogil=True)
def _accumulate(planes, local, y0, x0, weight, start, size, sums):  # pragma: no cover - compiled
    """Over the real pixels (y, x) of each crop j (of image local[j], box corner (y0, x0), size (h, w)),
    update at (y - y0, x - x0) the seven planes of its neuron's canvas (from start[j]): the weight
    sum W, the weighted mean (RGB) and the weighted sum of squared deviations S (RGB), by West's
    weighted form of Welford's update, which stays exact in float32 where sum w I^2 - (sum w I)^2 / W
    would cancel. `planes` is the batch (B, 3, H, W) uint8, so rows are contiguous."""
    H, W = planes.shape[2], planes.shape[3]
    for j in range(len(local)):
        b, wt, top, left, h, w = local[j], weight[j], y0[j], x0[j], size[j, 0], size[j, 1]
        hw = h * w
        xa, xb = max(0, left), min(W, left + w)
        for y in range(max(0, top), min(H, top + h)):
            row = start[j] + (y - top) * w - left
            for x in range(xa, xb):
                i = row + x
                total = sums[i] + wt
                sums[i] = total
                share = wt / total
                for k in range(3):
                    v = np.float32(planes[b, k, y, x])
                    mean = sums[i + (1 + k) * hw]
                    delta = v - mean
                    mean += delta * share
                    sums[i + (1 + k) * hw] = mean
                    sums[i + (4 + k) * hw] += wt * delta * (v - mean)


@numba.njit(cache=True, nogil=True)
def _thumbnails(pixels, local, y0, x0, size, thumb, at, per_row, out):  # pragma: no cover - compiled
    """Crop j (h, w) shrunk to (t, t) by area averaging (PyTorch's adaptive pooling bins), padding
    counted as grey 128, into the strip from out[at_j] whose rows are per_row t pixels long; a crop
    of thumbnail size is copied exactly."""
    H, W = pixels.shape[1], pixels.shape[2]
    for j in range(len(local)):
        b, top, left, h, w, t = local[j], y0[j], x0[j], size[j, 0], size[j, 1], thumb[j]
        for ty in range(t):
            ya, yb = (ty * h) // t, -((-(ty + 1) * h) // t)
            iya, iyb = max(ya + top, 0), min(yb + top, H)
            for tx in range(t):
                xa, xb = (tx * w) // t, -((-(tx + 1) * w) // t)
                ixa, ixb = max(xa + left, 0), min(xb + left, W)
                n = (yb - ya) * (xb - xa)
                grey = 128.0 * (n - max(iyb - iya, 0) * max(ixb - ixa, 0))
                r, g, bl = grey, grey, grey
                for y in range(iya, iyb):
                    for x in range(ixa, ixb):
                        r += pixels[b, y, x, 0]
                        g += pixels[b, y, x, 1]
                        bl += pixels[b, y, x, 2]
                i = at[j] + ty * per_row * t + tx
                out[i, 0] = np.uint8(min(255.0, np.floor(r / n + 0.5)))
                out[i, 1] = np.uint8(min(255.0, np.floor(g / n + 0.5)))
                out[i, 2] = np.uint8(min(255.0, np.floor(bl / n + 0.5)))


@numba.njit(cache=True, nogil=True)
def _merge_sums(a, b, start, size):  # pragma: no cover - compiled
    """a += b for two canvases' seven planes per pixel (W, weighted mean RGB, S RGB): Chan et al.'s
    pairwise update, W = Wa + Wb, mean = ma + (mb - ma) Wb / W, S = Sa + Sb + (mb - ma)^2 Wa Wb / W."""
    for n in range(len(size)):
        hw = size[n, 0] * size[n, 1]
        for p in range(hw):
            i = start[n] + p
            wa, wb = np.float64(a[i]), np.float64(b[i])
            total = wa + wb
            if wb == 0.0 or total <= 0.0:
                continue
            share, cross = wb / total, wa * wb / total
            for k in range(3):
                m, q = i + (1 + k) * hw, i + (4 + k) * hw
                delta = np.float64(b[m]) - np.float64(a[m])
                a[m] = np.float64(a[m]) + delta * share
                a[q] = np.float64(a[q]) + np.float64(b[q]) + delta * delta * cross
            a[i] = total


@numba.njit(cache=True, nogil=True)
def _finish(sums, start, size, nf, std):  # pragma: no cover - compiled
    """From each neuron's seven planes: NF = the weighted mean (HWC) and std = the mean over RGB
    of sqrt(S / W); where no crop saw a pixel, NF 0 and std NaN."""
    for n in range(len(size)):
        hw = size[n, 0] * size[n, 1]
        for p in range(hw):
            i, o = start[n] + p, start[n] // 7 + p
            total = sums[i]
            if total > 0:
                s = np.float32(0.0)
                for k in range(3):
                    nf[o, k] = sums[i + (1 + k) * hw]
                    s += np.sqrt(max(sums[i + (4 + k) * hw] / total, np.float32(0.0)))
                std[o] = s / np.float32(3.0)
            else:
                nf[o, 0], nf[o, 1], nf[o, 2] = 0.0, 0.0, 0.0
                std[o] = np.nan
