"""Layer listing, aliases and selection."""
from __future__ import annotations

import pytest

from neuronindex.errors import LayerError
from neuronindex.nets.layers import trace
from neuronindex.nets.models import load_model


@pytest.fixture(scope="module")
def resnet20_graph():
    return trace(load_model("cifar-resnet20"))


def test_cifar_resnet20_has_19_rectified_conv_aliases(resnet20_graph):
    aliases = [l.alias for l in resnet20_graph.layers if l.alias and l.alias.startswith("conv")]
    assert aliases == [f"conv{i}" for i in range(1, 20)]
    # the alias of a block's second conv is the block output (after the residual add and ReLU)
    assert resnet20_graph.lookup("conv3").name == "layer1.0.relu2"
    assert resnet20_graph.lookup("layer1.0") is resnet20_graph.lookup("conv3")
    assert resnet20_graph.lookup("layer3").channels == 64
    assert resnet20_graph.lookup("layer3").map_h == 8


def test_all_conv_and_dedup(resnet20_graph):
    picks = resnet20_graph.select("all-conv,layer1.0,conv1")
    assert len(picks) == 19
    assert [p.name for p in picks][:3] == ["conv1", "conv2", "conv3"]


def test_unknown_layer_lists_close_matches(resnet20_graph):
    with pytest.raises(LayerError, match=r"unknown layer 'conv20' \(did you mean conv2"):
        resnet20_graph.select("conv20")
    with pytest.raises(LayerError, match="no layers selected"):
        resnet20_graph.select(" , ")


def test_torchvision_resnet18_stages():
    graph = trace(load_model("torchvision:resnet18"))
    stages = graph.select("layer1,layer2,layer3,layer4")
    assert [s.layer.channels for s in stages] == [64, 128, 256, 512]
    assert [s.layer.map_h for s in stages] == [56, 28, 14, 7]
    assert graph.lookup("conv1").name == "relu"


def test_torchscript_layers_come_from_hooks(tmp_path):
    import torch

    from tinymodels import TinyCNN

    torch.jit.script(TinyCNN().eval()).save(str(tmp_path / "tiny.pt"))
    loaded = load_model(f"torchscript:{tmp_path / 'tiny.pt'}")
    loaded.preprocessing.input_size = (16, 16)
    graph = trace(loaded)
    assert not graph.traced
    assert [l.name for l in graph.layers][:2] == ["conv1", "relu1"]
    assert graph.lookup("conv1").field is None
