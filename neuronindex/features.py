"""Pass 2: receptive-field crops of each neuron's top images -> Neuron Feature (seed 004, eq. 1).

Input is a *crop plan*: for every (neuron, rank) of the top-k lists, the image, the receptive-
field box of the argmax unit (in the model's input, possibly crossing the border) and the
relative activation w_j = a_j / a_max. Each needed image is decoded exactly once (grouped by
image, all layers together, in parallel DataLoader workers) and every crop it contributes is
cut from it at once. Crops are padded where the box leaves the image, and a validity mask
makes sure padding never counts as image content.

  NF(p)   = sum_j w_j m_j(p) I_j(p) / sum_j w_j m_j(p)      over crops with w_j >= threshold,
                                                             at most nf_max of them
  std(p)  = the w-weighted standard deviation of I_j(p) over the valid crops, averaged over the
            colour channels (the colour index weights use it)

(Seed 004 writes (1/N) sum w_j I_j; normalising by the weights instead keeps the NF in the
image's range and lets masked pixels average only what was seen. The ranking of neurons by
any index is unaffected.)
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

SPRITE_CROPS = 12
THUMB_MAX = 48


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
    from PIL import Image

    rgba = np.concatenate([np.clip(np.rint(nf), 0, 255).astype(np.uint8),
                           (valid * 255).astype(np.uint8)[..., None]], axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
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
        vals, ids = res["top_values"], res["top_ids"]
        ys, xs = res["top_y"], res["top_x"]
        amax = res["act_max"]
        valid = np.isfinite(vals)
        ch, rk = np.nonzero(valid)
        sh, sw = f.stride
        start, end = f.start, f.end
        x0 = xs[ch, rk] * sw + start[ch, 1]
        y0 = ys[ch, rk] * sh + start[ch, 0]
        x1 = xs[ch, rk] * sw + end[ch, 1]
        y1 = ys[ch, rk] * sh + end[ch, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(amax[ch] > 0, vals[ch, rk] / amax[ch], np.nan)
        neurons.append(base + ch)
        ranks.append(rk)
        images.append(ids[ch, rk])
        boxes.append(np.stack([x0, y0, x1, y1], 1))
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


def compute(plan: CropPlan, images, preprocessing, workers: int = 0, batch_size: int = 64,
            progress: bool = True, on_batch=None) -> list[NeuronFeature | None]:
    """Decode each needed image once and accumulate every neuron's NF, std and sprite.

    `on_batch(images_uint8, local_image_index, entries)`, if given, sees every decoded batch with
    the plan entries it serves (e.g. to forward the images again in greyscale).
    """
    import torch
    from tqdm import tqdm

    from .extract import image_batches

    # every valid top crop is visited (callbacks embed them all); NF and sprite work only on their own
    keep = (plan.use_nf | plan.sprite | np.isfinite(plan.weight)) if on_batch is not None else (plan.use_nf | plan.sprite)
    order = np.argsort(plan.image[keep], kind="stable")
    idx = np.nonzero(keep)[0][order]
    e_image = plan.image[idx]
    needed = np.unique(e_image)
    H, W = preprocessing.input_size
    box = plan.box[idx]
    pad = int(max(0, -box[:, 0].min(initial=0), -box[:, 1].min(initial=0), box[:, 2].max(initial=0) - W,
                  box[:, 3].max(initial=0) - H))
    groups: dict[tuple[int, int], dict] = {}
    slot_of = np.zeros(plan.n_neurons, dtype=np.int64)
    for n, (h, w) in enumerate(plan.sizes):
        g = groups.setdefault((int(h), int(w)), {"members": []})
        slot_of[n] = len(g["members"])
        g["members"].append(n)
    for (h, w), g in groups.items():
        m = len(g["members"])
        g["wsum"] = torch.zeros(m, h, w)
        g["wimg"] = torch.zeros(m, h, w, 3)
        g["wimg2"] = torch.zeros(m, h, w, 3)
        t = min(THUMB_MAX, max(h, w))
        g["thumb"] = t
        g["sprites"] = torch.full((m, SPRITE_CROPS, t, t, 3), 128, dtype=torch.uint8)
    n_used = np.zeros(plan.n_neurons, dtype=np.int64)
    np.add.at(n_used, plan.neuron[plan.use_nf], 1)
    sprite_n = np.zeros(plan.n_neurons, dtype=np.int64)
    np.add.at(sprite_n, plan.neuron[plan.sprite], 1)
    bar = tqdm(total=len(needed), unit="img", desc="pass 2: crops", disable=not progress, dynamic_ncols=True)
    lo = 0
    for batch, positions, problems in image_batches(images, preprocessing, batch_size, workers, needed.tolist()):
        pos = positions.numpy()
        hi = np.searchsorted(e_image, pos[-1], side="right")
        sel = idx[lo:hi]
        local = np.searchsorted(pos, e_image[lo:hi])
        lo = hi
        padded = torch.nn.functional.pad(batch.permute(0, 3, 1, 2), (pad, pad, pad, pad)).permute(0, 2, 3, 1)
        if on_batch is not None:
            on_batch(batch, local, sel)
        neurons = plan.neuron[sel]
        sizes = plan.sizes[neurons]
        for (h, w), g in groups.items():
            in_group = (sizes[:, 0] == h) & (sizes[:, 1] == w) & (plan.use_nf[sel] | plan.sprite[sel])
            if not in_group.any():
                continue
            # NF crops first, so the accumulation below works on a view of the stack
            order = np.argsort(~plan.use_nf[sel[in_group]], kind="stable")
            e, li = sel[in_group][order], local[in_group][order]
            n_nf = int(plan.use_nf[e].sum())
            x0, y0 = plan.box[e, 0] + pad, plan.box[e, 1] + pad
            # the padding covers every box, so each crop is a plain slice (a view); one stack copies
            crops = torch.stack([padded[int(b), int(y):int(y) + h, int(x):int(x) + w]
                                 for b, y, x in zip(li, y0, x0)])  # (n, h, w, 3) uint8
            ry = torch.from_numpy(y0)[:, None] + torch.arange(h)[None, :]
            rx = torch.from_numpy(x0)[:, None] + torch.arange(w)[None, :]
            row_in = (ry >= pad) & (ry < pad + H)
            col_in = (rx >= pad) & (rx < pad + W)
            mask = (row_in[:, :, None] & col_in[:, None, :]).float()  # valid image pixels, not padding
            slots = torch.from_numpy(slot_of[plan.neuron[e]])
            if n_nf:
                c = crops[:n_nf].float()
                wm = mask[:n_nf] * torch.from_numpy(plan.weight[e[:n_nf]]).float()[:, None, None]
                weighted = c * wm[..., None]
                s_ = slots[:n_nf]
                g["wsum"].index_add_(0, s_, wm)
                g["wimg"].index_add_(0, s_, weighted)
                g["wimg2"].index_add_(0, s_, weighted.mul_(c))
            spr = np.nonzero(plan.sprite[e])[0]
            if len(spr):
                t = g["thumb"]
                pick = torch.from_numpy(spr)
                c = torch.where(mask.index_select(0, pick)[..., None] > 0, crops.index_select(0, pick),
                                torch.tensor(128, dtype=torch.uint8))
                if (h, w) != (t, t):
                    c = torch.nn.functional.interpolate(c.permute(0, 3, 1, 2).float(), size=(t, t),
                                                        mode="area" if max(h, w) > t else "nearest")
                    c = c.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
                g["sprites"][slots[pick], torch.from_numpy(plan.rank[e[spr]])] = c
        bar.update(len(pos))
    bar.close()
    out: list[NeuronFeature | None] = [None] * plan.n_neurons
    for (h, w), g in groups.items():
        wsum, wimg, wimg2 = (g[k].numpy() for k in ("wsum", "wimg", "wimg2"))
        for slot, n in enumerate(g["members"]):
            if n_used[n] == 0 and sprite_n[n] == 0:
                continue
            valid = wsum[slot] > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                nf = np.where(valid[..., None], wimg[slot] / wsum[slot][..., None], 0.0).astype(np.float32)
                var = np.maximum(wimg2[slot] / wsum[slot][..., None] - nf.astype(np.float64) ** 2, 0.0)
                std = np.where(valid, np.sqrt(var).mean(-1), np.nan).astype(np.float32)
            k = int(sprite_n[n])
            sprite = None
            if k:
                sp = g["sprites"][slot, :k].numpy()
                sprite = np.concatenate(list(sp), axis=1)
            out[n] = NeuronFeature(nf, valid, std, int(n_used[n]), sprite, k)
    return out


def self_response(extractor, selections, owners, features, act_max_by_layer, preprocessing,
                  batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Each neuron's activation on its own NF (placed as the field of a central unit) / a_max.

    The rest of the input is the dataset mean (zero after normalisation).
    """
    import torch
    from tqdm import tqdm

    H, W = preprocessing.input_size
    out = np.full(len(owners), np.nan)
    todo = [n for n, f in enumerate(features) if f is not None and f.n_used > 0]
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    bar = tqdm(total=len(todo), unit="neuron", desc="NF self-response", disable=not progress, dynamic_ncols=True)
    for s in range(0, len(todo), batch_size):
        chunk = todo[s:s + batch_size]
        x = torch.zeros(len(chunk), 3, H, W)
        units = []
        for i, n in enumerate(chunk):
            li, c = owners[n]
            layer = selections[li].layer
            cy, cx = layer.map_h // 2, layer.map_w // 2
            x0, y0, x1, y1 = layer.field.box(c, cy, cx)
            f = features[n]
            img = torch.from_numpy(np.ascontiguousarray(f.nf)).permute(2, 0, 1) * (preprocessing.pixel_scale / 255.0)
            if preprocessing.channel_order == "bgr":
                img = img.flip(0)
            normed = (img - mean) / std * torch.from_numpy(f.valid.astype(np.float32))
            # clip the field to the input
            ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
            if ix1 > ix0 and iy1 > iy0:
                x[i, :, iy0:iy1, ix0:ix1] = normed[:, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
            units.append((li, c, cy, cx))
        acts = extractor.forward_normalized(x)
        for i, n in enumerate(chunk):
            li, c, cy, cx = units[i]
            a = float(acts[selections[li].layer.name][i, c, cy, cx])
            amax = act_max_by_layer[li][c]
            out[n] = a / amax if amax > 0 else np.nan
        bar.update(len(chunk))
    bar.close()
    return out
