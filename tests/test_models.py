"""Model specs, checkpoints and preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronindex.errors import ModelError, UsageError
from neuronindex.nets.models import Preprocessing, load_model, read_state_dict
from tinymodels import TinyCNN


def test_checkpoint_forms_all_load(tmp_path):
    reference = TinyCNN().state_dict()
    forms = {
        "plain.pt": reference,
        "wrapped.pt": {"state_dict": reference, "best_prec1": 1.0},
        "model.pt": {"model": reference},
        "dataparallel.pt": {"state_dict": {f"module.{k}": v for k, v in reference.items()}},
    }
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        loaded = load_model("python:tinymodels:tiny_cnn", weights=str(tmp_path / name))
        assert loaded.fingerprint() == load_model("python:tinymodels:tiny_cnn").fingerprint()


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model("python:tinymodels:tiny_cnn", weights=str(tmp_path / "missing.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        read_state_dict(tmp_path / "garbage.pt")
    torch.save({"conv9.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="does not fit the model"):
        load_model("python:tinymodels:tiny_cnn", weights=str(tmp_path / "other.pt"))


def test_unknown_specs_are_refused():
    with pytest.raises(ModelError, match="unknown model spec"):
        load_model("resnet18")
    with pytest.raises(ModelError, match="did you mean"):
        load_model("torchvision:resnet181")
    with pytest.raises(ModelError, match="cifar-resnet20"):
        load_model("cifar-resnet21")
    with pytest.raises(ModelError, match="cannot import"):
        load_model("python:nosuchmodule:fn")
    with pytest.raises(ModelError, match="does not exist"):
        load_model("torchscript:/nonexistent.pt")


def test_torchvision_weights_download_failure_is_a_clear_error(monkeypatch):
    import torchvision.models as tvm

    def offline(*args, **kwargs):
        if kwargs.get("weights") is not None:
            raise OSError("network is unreachable")
        return original(*args, **kwargs)

    original = tvm.get_model
    monkeypatch.setattr(tvm, "get_model", offline)
    with pytest.raises(ModelError, match="cannot download torchvision weights.*--weights PATH"):
        load_model("torchvision:resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ModelError, match="neither a file nor a weights name"):
        load_model("torchvision:resnet18", weights="NOPE_V9")


def test_torchscript_spec_matches_the_eager_model(tmp_path):
    module = TinyCNN().eval()
    torch.jit.script(module).save(str(tmp_path / "tiny.pt"))
    loaded = load_model(f"torchscript:{tmp_path / 'tiny.pt'}")
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(loaded.module(x), module(x), atol=1e-6)
    assert loaded.scripted


def test_caffe_style_preprocessing_bgr_0_255():
    pre = Preprocessing(input_size=(2, 2), geometry="resize", resize=None, mean=(104.0, 117.0, 123.0),
                        std=(1.0, 1.0, 1.0), channel_order="bgr", pixel_scale=255)
    batch = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    batch[..., 0] = 200  # red
    x = pre.normalize(batch)
    # channel 0 is blue now: 0 - 104; channel 2 is red: 200 - 123
    assert x[0, 0, 0, 0].item() == pytest.approx(-104.0)
    assert x[0, 2, 0, 0].item() == pytest.approx(77.0)


def test_rgb_preprocessing_matches_torchvision_normalize():
    from torchvision.transforms.functional import normalize

    pre = Preprocessing(input_size=(4, 4), geometry="resize", resize=None)
    batch = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    expected = normalize(batch.permute(0, 3, 1, 2).float() / 255, pre.mean, pre.std)
    assert torch.allclose(pre.normalize(batch), expected, atol=1e-6)


def test_resize_crop_geometry():
    from PIL import Image

    pre = Preprocessing(input_size=(224, 224), geometry="resize-crop", resize=256)
    out = pre.geometric(Image.new("RGB", (640, 480)))
    assert out.size == (224, 224)
    small = Preprocessing(input_size=(8, 8), geometry="none", resize=None).geometric(Image.new("RGB", (4, 4), (255, 0, 0)))
    arr = np.asarray(small)
    assert arr.shape == (8, 8, 3) and arr[0, 0].tolist() == [0, 0, 0] and arr[4, 4].tolist() == [255, 0, 0]


def test_bad_preprocessing_values():
    with pytest.raises(UsageError):
        Preprocessing(channel_order="rbg")
    with pytest.raises(UsageError):
        Preprocessing(pixel_scale=10)
    with pytest.raises(UsageError):
        Preprocessing(geometry="stretch")
