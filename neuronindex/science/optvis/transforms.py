"""Transformations applied to the image before every forward, for robust optimised images (Olah et
al. 2017): one random affine resampling per image (translation, scale, rotation)."""
from __future__ import annotations


def random_affine(x, gens, jitter: float, scale: float, rotate: float):
    """Each image of x (B, 3, h, w) translated by up to `jitter` px, scaled by 1 +- `scale` and
    rotated by up to `rotate` degrees (independent draws per image), one bilinear resampling
    reflected at the border; the size stays, so a unit keeps its place in the map."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    if not (jitter or scale or rotate):
        return x
    u = torch.stack([torch.rand(4, generator=g) for g in gens]) * 2 - 1
    s = 1 + u[:, 0] * scale
    a = torch.deg2rad(u[:, 1] * rotate)
    tx, ty = u[:, 2] * jitter * 2 / w, u[:, 3] * jitter * 2 / h
    theta = torch.stack([torch.stack([a.cos() / s, -a.sin() / s, tx], 1),
                         torch.stack([a.sin() / s, a.cos() / s, ty], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
