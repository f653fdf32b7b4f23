"""Model specs -> (nn.Module in eval mode, Preprocessing, provenance).

Specs:
  torchvision:NAME            any torchvision classification model; --weights is a torchvision
                              weights name (IMAGENET1K_V1, DEFAULT; downloaded on first use) or a
                              local checkpoint file; without weights the model is randomly
                              initialised with a fixed seed
  cifar-resnet20|32|44|56     He et al. 2016 CIFAR ResNets (option-A shortcuts); --weights is a
                              checkpoint such as akamaster's resnet20-12fca82f.th
  timm:NAME                   a timm model (convnets: resnet, mobilenet, efficientnet, ...); --weights
                              is a local checkpoint, or `pretrained` to download timm's weights;
                              without weights it is randomly initialised with a fixed seed
  torchscript:PATH            a TorchScript file
  python:pkg.module:callable  a callable returning an nn.Module

Checkpoints are read with weights_only=True: a plain state_dict, or a dict holding one under
`state_dict` or `model`; a `module.` prefix (DataParallel) is stripped.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from neuronindex.errors import ModelError, UsageError, did_you_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_DEPTHS = (20, 32, 44, 56)


@dataclass
class Preprocessing:
    """How an image becomes the model's input.

    geometry: `resize-crop` (shorter side to `resize`, then centre crop to input size, the
    torchvision ImageNet recipe), `resize` (straight to the input size), or `none` (centre crop
    or pad to the input size without scaling). The crop is what the model saw: receptive-field
    crops are cut from it. Pixel values are scaled to [0, pixel_scale], optionally reordered to
    BGR, then (x - mean) / std with mean and std in that same scale and in the model's channel
    order (as Caffe prototxts give them: bgr means 104, 117, 123).
    """

    input_size: tuple[int, int] = (224, 224)
    geometry: str = "resize-crop"
    resize: int | None = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "rgb"
    pixel_scale: float = 1.0

    def __post_init__(self):
        self.input_size = tuple(int(v) for v in self.input_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.geometry not in ("resize-crop", "resize", "none"):
            raise UsageError(f"unknown resize policy {self.geometry!r}; use resize-crop, resize or none")
        if self.channel_order not in ("rgb", "bgr"):
            raise UsageError(f"unknown channel order {self.channel_order!r}; use rgb or bgr")
        if self.pixel_scale not in (1, 1.0, 255, 255.0):
            raise UsageError(f"pixel scale must be 1 or 255, not {self.pixel_scale}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UsageError("mean and std need three values each, std > 0")

    def geometric(self, image, resample=Image.BILINEAR):
        """PIL RGB image -> PIL RGB image of exactly input_size, as the model sees it (a label map
        goes through with `resample=Image.NEAREST`)."""
        h, w = self.input_size
        if self.geometry == "resize":
            return image.resize((w, h), resample)
        if self.geometry == "resize-crop":
            short = self.resize or min(h, w)
            iw, ih = image.size
            scale = short / min(iw, ih)
            nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
            image = image.resize((nw, nh), resample)
        iw, ih = image.size
        left, top = (iw - w) // 2, (ih - h) // 2
        # crop() pads with black where the box leaves the image (the `none` policy on small images)
        return image.crop((left, top, left + w, top + h))

    def map_box(self, box, image_size) -> tuple[float, float, float, float]:
        """A box (x0, y0, x1, y1) in original image pixels -> the same region in the model input."""
        iw, ih = image_size
        h, w = self.input_size
        x0, y0, x1, y1 = box
        if self.geometry == "resize":
            sx, sy = w / iw, h / ih
            return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        scale = 1.0
        if self.geometry == "resize-crop":
            short = self.resize or min(h, w)
            scale = short / min(iw, ih)
            iw, ih = max(w, round(iw * scale)), max(h, round(ih * scale))
        left, top = (iw - w) // 2, (ih - h) // 2
        return (x0 * scale - left, y0 * scale - top, x1 * scale - left, y1 * scale - top)

    def normalize(self, batch):
        """uint8 tensor (B, H, W, 3) RGB -> float tensor (B, 3, H, W) normalised for the model."""
        return self._standardise(batch.permute(0, 3, 1, 2).float() * (self.pixel_scale / 255.0))

    def normalize_float(self, x01):
        """Float tensor (B, 3, H, W) RGB in [0, 1] -> normalised for the model (differentiable)."""
        return self._standardise(x01 * self.pixel_scale)

    def _standardise(self, x):
        """(B, 3, H, W) in pixel scale, RGB -> the model's channel order, (x - mean) / std."""
        import torch

        if self.channel_order == "bgr":
            x = x.flip(1)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        return cls(**json.loads(text))


@dataclass
class LoadedModel:
    module: Any  # torch.nn.Module, eval mode
    preprocessing: Preprocessing
    spec: str
    weights: str | None
    name: str
    class_names: tuple[str, ...] | None = None
    provenance: dict = field(default_factory=dict)
    scripted: bool = False

    def fingerprint(self) -> str:
        return state_fingerprint(self.module)

    @property
    def random_weights(self) -> bool:
        """Built without trained weights (a torchvision, timm or CIFAR spec without --weights)."""
        return str(self.provenance.get("weights", "")).startswith("random")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def state_fingerprint(module) -> str:
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- CIFAR ResNets (He et al. 2016)

def _cifar_resnet(depth: int):
    import torch.nn as nn
    import torch.nn.functional as F

    class ShortcutA(nn.Module):
        """Option A: subsample by 2 and zero-pad the new channels (no parameters)."""
        def __init__(self, planes: int):
            super().__init__()
            self.pad = planes // 4

        def forward(self, x):
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    class BasicBlock(nn.Module):
        def __init__(self, in_planes: int, planes: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.relu1 = nn.ReLU()
            self.relu2 = nn.ReLU()
            self.shortcut = ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

        def forward(self, x):
            out = self.relu1(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu2(out + self.shortcut(x))

    class CifarResNet(nn.Module):
        def __init__(self, n: int, num_classes: int = 10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu = nn.ReLU()
            planes, layers = 16, []
            for stage, width in enumerate((16, 32, 64)):
                blocks = []
                for i in range(n):
                    stride = 2 if (stage > 0 and i == 0) else 1
                    blocks.append(BasicBlock(planes, width, stride))
                    planes = width
                layers.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3 = layers
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.linear = nn.Linear(64, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.linear(self.pool(x).flatten(1))

    return CifarResNet((depth - 2) // 6)


# ---------------------------------------------------------------- checkpoints

def read_state_dict(path: str | Path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; pass an existing file with --weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read checkpoint {path}: {first[:200]}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ModelError(f"checkpoint {path} holds no state_dict (expected a dict of tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(module, path: str | Path) -> None:
    state = read_state_dict(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise ModelError(f"checkpoint {path} does not fit the model: {' '.join(lines[1:3])[:300]}") from None


# ---------------------------------------------------------------- specs

def load_model(
    spec: str,
    weights: str | None = None,
    preprocessing: Preprocessing | None = None,
    name: str | None = None,
) -> LoadedModel:
    """Build the model named by `spec`, load weights, put it in eval mode."""
    spec = spec.strip()
    if spec.startswith("cifar-resnet"):
        loaded = _load_cifar(spec, weights)
    elif spec.startswith("torchvision:"):
        loaded = _load_torchvision(spec, weights)
    elif spec.startswith("timm:"):
        loaded = _load_timm(spec, weights)
    elif spec.startswith("torchscript:"):
        loaded = _load_torchscript(spec, weights)
    elif spec.startswith("python:"):
        loaded = _load_python(spec, weights)
    else:
        raise ModelError(
            f"unknown model spec {spec!r}; use torchvision:NAME, timm:NAME, cifar-resnet20|32|44|56, "
            "torchscript:PATH or python:package.module:callable"
        )
    if preprocessing is not None:
        loaded.preprocessing = preprocessing
    if name:
        loaded.name = name
    if loaded.weights and Path(loaded.weights).is_file():
        loaded.weights = str(Path(loaded.weights).resolve())  # recorded in the index, used from anywhere
    if loaded.spec.startswith("torchscript:"):
        loaded.spec = "torchscript:" + str(Path(loaded.spec.split(":", 1)[1]).resolve())
    loaded.module.eval()
    for p in loaded.module.parameters():
        p.requires_grad_(False)
    return loaded


def _load_cifar(spec: str, weights: str | None) -> LoadedModel:
    import torch

    try:
        depth = int(spec[len("cifar-resnet"):])
    except ValueError:
        depth = -1
    if depth not in CIFAR_DEPTHS:
        raise ModelError(f"unknown model spec {spec!r}; built-in CIFAR ResNets are cifar-resnet20, -32, -44, -56")
    torch.manual_seed(0)
    module = _cifar_resnet(depth)
    if weights:
        load_checkpoint(module, weights)
    pre = Preprocessing(input_size=(32, 32), geometry="resize", resize=None)
    return LoadedModel(module, pre, spec, weights, f"resnet{depth}", CIFAR10_CLASSES,
                       {"architecture": "He et al. 2016 CIFAR ResNet, option-A shortcuts",
                        "weights": weights or "random (seed 0)"})


def _load_torchvision(spec: str, weights: str | None) -> LoadedModel:
    import torch
    import torchvision.models as tvm

    arch = spec.split(":", 1)[1]
    if arch not in tvm.list_models():

        raise ModelError(f"torchvision has no model {arch!r}{did_you_mean(arch, tvm.list_models())}")
    torch.manual_seed(0)
    pre = Preprocessing()
    class_names = None
    provenance: dict = {"source": "torchvision", "architecture": arch}
    if weights and Path(weights).exists():
        module = tvm.get_model(arch, weights=None)
        load_checkpoint(module, weights)
    elif weights:
        enum = tvm.get_model_weights(arch)
        wname = weights.split(".")[-1]
        try:
            w = enum[wname] if wname != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise ModelError(
                f"{weights!r} is neither a file nor a weights name of {arch}; "
                f"choose one of {', '.join(m.name for m in enum)} or pass a checkpoint path"
            ) from None
        try:
            module = tvm.get_model(arch, weights=w)
        except Exception as exc:  # URLError, HTTPError, OSError, RuntimeError on a partial file
            raise ModelError(
                f"cannot download torchvision weights {w} ({type(exc).__name__}); without internet, "
                "pass a local checkpoint file with --weights PATH"
            ) from None
        t = w.transforms()
        crop = int(t.crop_size[0])
        pre = Preprocessing(input_size=(crop, crop), geometry="resize-crop", resize=int(t.resize_size[0]),
                            mean=tuple(t.mean), std=tuple(t.std))
        class_names = tuple(w.meta.get("categories") or ()) or None
        provenance["weights"] = str(w)
    else:
        module = tvm.get_model(arch, weights=None)
        provenance["weights"] = "random (seed 0)"
    return LoadedModel(module, pre, spec, weights, arch, class_names, provenance)


def _load_timm(spec: str, weights: str | None) -> LoadedModel:
    """timm:NAME[?key=value&...]: keyword arguments go to timm.create_model (`output_stride=8` dilates)."""
    import torch

    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed; pip install timm (or neuronindex[timm])") from None
    arch, _, query = spec.split(":", 1)[1].partition("?")
    kwargs = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        kwargs[key] = int(value) if value.lstrip("-").isdigit() else value
    if arch not in timm.list_models():

        raise ModelError(f"timm has no model {arch!r}{did_you_mean(arch, timm.list_models())}")
    torch.manual_seed(0)
    pretrained = weights == "pretrained"
    try:
        module = timm.create_model(arch, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise ModelError(f"timm cannot build {arch} with {query}: {exc}") from None
    except Exception as exc:  # download failures: URLError, HTTPError, OSError, RuntimeError
        raise ModelError(f"cannot download timm weights for {arch} ({type(exc).__name__}); without internet, pass a "
                         "local checkpoint file with --weights PATH") from None
    if weights and not pretrained:
        load_checkpoint(module, weights)
    config = timm.data.resolve_data_config({}, model=module)
    h, w = (int(v) for v in config["input_size"][1:])
    pre = Preprocessing(input_size=(h, w), geometry="resize-crop", resize=int(round(min(h, w) / config.get("crop_pct", 0.875))),
                        mean=tuple(config["mean"]), std=tuple(config["std"]))
    provenance = {"source": "timm", "architecture": arch, "kwargs": kwargs,
                  "weights": "timm pretrained" if pretrained else (weights or "random (seed 0)")}
    return LoadedModel(module, pre, spec, None if pretrained else weights, arch, None, provenance)


def _load_torchscript(spec: str, weights: str | None) -> LoadedModel:
    import torch

    path = Path(spec.split(":", 1)[1])
    if not path.is_file():
        raise ModelError(f"TorchScript file {path} does not exist")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(f"cannot load TorchScript file {path}: {str(exc).splitlines()[0][:200]}") from None
    if weights:
        load_checkpoint(module, weights)
    return LoadedModel(module, Preprocessing(), spec, weights, path.stem, None, {"source": "torchscript"},
                       scripted=True)


def _load_python(spec: str, weights: str | None) -> LoadedModel:
    import torch.nn as nn

    target = spec.split(":", 1)[1]
    if ":" not in target:
        raise ModelError(f"python spec {spec!r} needs the form python:package.module:callable")
    module_name, attr = target.rsplit(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import {target}: {exc}") from None
    module = factory()
    if not isinstance(module, nn.Module):
        raise ModelError(f"{target} returned {type(module).__name__}, not a torch.nn.Module")
    if weights:
        load_checkpoint(module, weights)
    names = getattr(module, "class_names", None)  # the model's outputs, when the callable names them
    names = tuple(str(n) for n in names) if isinstance(names, (list, tuple)) and names else None
    return LoadedModel(module, Preprocessing(), spec, weights, attr, names, {"source": "python", "callable": target})
