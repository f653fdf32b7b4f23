"""Image parameterisations of activation maximisation (Olah et al. 2017; Dai 2020; Øygard 2016):
B images of (h, w) as parameters, `rgb()` -> (B, 3, h, w) in [0, 1] with autograd.

  FourierImage  the inverse FFT of a spectrum scaled by 1/f^decay, in decorrelated colour (the
                square root of the RGB covariance of the index's images), through a sigmoid
  PixelImage    the RGB pixels through a sigmoid (blurred every few steps by the render loop)
  RawImage      the pixels themselves, clipped to [0, 1] after every step (Dai 2020's real-image runs)"""
from __future__ import annotations

import math

import numpy as np


def color_sqrt(pixels: np.ndarray | None) -> np.ndarray:
    """The square root of the RGB covariance of `pixels` (n, 3) in [0, 1], scaled so its largest
    column has unit length: the colour mixing of the decorrelated parameterisation. None or too
    few pixels: the identity (no decorrelation)."""
    if pixels is None or len(pixels) < 16:
        return np.eye(3)
    cov = np.cov(np.asarray(pixels, dtype=np.float64).T)
    vals, vecs = np.linalg.eigh(cov)
    root = vecs @ np.diag(np.sqrt(np.clip(vals, 1e-8, None))) @ vecs.T
    return root / np.linalg.norm(root, axis=0).max()


def dataset_color(images: list, limit: int = 64) -> np.ndarray:
    """color_sqrt of up to `limit` images (PIL RGB, as the model sees them), 4,096 pixels each."""
    rng = np.random.default_rng(0)
    samples = []
    for im in images[:limit]:
        a = np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0
        samples.append(a[rng.choice(len(a), min(len(a), 4096), replace=False)])
    return color_sqrt(np.concatenate(samples) if samples else None)


class _Image:
    """B images of (h, w) as parameters; `rgb()` -> (B, 3, h, w) in [0, 1] with autograd."""

    def parameters(self) -> list:
        return [self.p]

    def clip(self) -> None:
        """After each step (only the raw pixels need it)."""

    def to(self, device) -> "_Image":
        """Parameters (and constants) on `device`, so the whole step runs there."""
        for name in ("scale", "color"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).to(device))
        self.p = self.p.detach().to(device).requires_grad_()
        return self


def _noise(shape, gens, sd):
    """One seeded draw per image (each image's own generator: its result does not depend on the batch)."""
    import torch

    return torch.stack([torch.randn(*shape, generator=g) for g in gens]) * sd


class FourierImage(_Image):
    def __init__(self, b, h, w, color, decay, sd, gens, start=None):
        import torch

        self.h, self.w = h, w
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = torch.sqrt(fx * fx + fy * fy).clamp(min=1.0 / max(h, w))
        self.scale = (1.0 / freq ** decay).float()
        self.color = torch.as_tensor(color, dtype=torch.float32)
        if start is None:
            self.p = _noise((3, h, w // 2 + 1, 2), gens, sd).requires_grad_()
        else:  # the spectrum whose image is `start` (B, 3, h, w) in [0, 1]
            logit = torch.logit(start.clamp(1e-3, 1 - 1e-3))
            flat = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.color), logit)
            spec = torch.fft.rfft2(flat * 4, norm="ortho") / self.scale
            self.p = torch.view_as_real(spec).contiguous().requires_grad_()

    def rgb(self):
        import torch

        spec = torch.view_as_complex(self.p) * self.scale
        x = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho") / 4
        return torch.sigmoid(torch.einsum("ij,bjhw->bihw", self.color, x))


class PixelImage(_Image):
    def __init__(self, b, h, w, sd, gens, start=None):
        import torch

        if start is None:
            self.p = _noise((3, h, w), gens, sd).requires_grad_()
        else:
            self.p = torch.logit(start.clamp(1e-3, 1 - 1e-3)).clone().requires_grad_()

    def rgb(self):
        import torch

        return torch.sigmoid(self.p)

    def blur(self, sigma: float) -> None:
        import torch
        from torchvision.transforms.functional import gaussian_blur

        k = max(3, 2 * math.ceil(3 * sigma) + 1)
        with torch.no_grad():
            self.p.copy_(gaussian_blur(self.p, [k, k], [sigma, sigma]))


class RawImage(PixelImage):
    """The pixels themselves in [0, 1], clipped after every step (projected gradient ascent, as
    Dai 2020 steps a real image): no sigmoid, whose gradient all but vanishes at the saturated
    pixels a real picture has."""

    def __init__(self, b, h, w, sd, gens, start=None):
        if start is None:
            self.p = (_noise((3, h, w), gens, sd) + 0.5).clamp(0, 1).requires_grad_()
        else:
            self.p = start.clone().requires_grad_()

    def rgb(self):
        return self.p

    def clip(self) -> None:
        import torch

        with torch.no_grad():
            self.p.clamp_(0, 1)
