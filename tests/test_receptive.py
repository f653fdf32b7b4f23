"""Receptive fields: published tables and an empirical input-gradient cross-check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from neuronindex.nets.layers import trace
from neuronindex.nets.models import LoadedModel, Preprocessing, load_model
from neuronindex.nets.receptive import Field


def _loaded(module, size):
    return LoadedModel(module.eval(), Preprocessing(input_size=(size, size)), "python:test", None, "test")


@pytest.mark.slow
def test_vgg16_reproduces_seed_002_table_1():
    graph = trace(load_model("torchvision:vgg16"))
    names = ["conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2", "conv3_1", "conv3_2", "conv3_3", "pool3",
             "conv4_1", "conv4_2", "conv4_3", "pool4", "conv5_1", "conv5_2", "conv5_3", "pool5"]
    sizes = [graph.lookup(n).rf_size for n in names]
    strides = [graph.lookup(n).rf_stride for n in names]
    assert sizes == [3, 5, 6, 10, 14, 16, 24, 32, 40, 44, 60, 76, 92, 100, 132, 164, 196, 212]
    assert strides == [1, 1, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 16, 16, 16, 16, 32]


def vgg_m(width: int = 8):
    """VGG-M as in seed 004's Table 1 (3x3 stride-2 max pools), with few channels."""
    return nn.Sequential(
        nn.Conv2d(3, width, 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(width, width, 5, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )


def test_vgg_m_gives_the_neuron_feature_sizes_of_seed_004():
    graph = trace(_loaded(vgg_m(), 224))
    convs = [l for l in graph.layers if l.kind == "Conv2d"]
    assert [l.rf_size for l in convs] == [7, 27, 75, 107, 139]


def test_box_of_a_unit_can_cross_the_border():
    f = Field.input(1).spatial((3, 3), (1, 1), (1, 1))
    assert f.box(0, 0, 0) == (-1, -1, 2, 2)
    assert f.box(0, 5, 7) == (6, 4, 9, 7)


def _positive(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(m.weight.abs() + 0.01)
                if m.bias is not None:
                    m.bias.fill_(0.01)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return module.eval()


def _gradient_support(module, node, channel, y, x, size):
    from torchvision.models.feature_extraction import create_feature_extractor

    gm = create_feature_extractor(module, return_nodes={node: "out"})
    inp = torch.ones(1, 3, size, size, requires_grad=True)
    gm(inp)["out"][0, channel, y, x].backward()
    g = inp.grad[0].abs().sum(0).numpy()
    rows, cols = np.nonzero(g.sum(1))[0], np.nonzero(g.sum(0))[0]
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


def _clip(box, size):
    x0, y0, x1, y1 = box
    return (max(x0, 0), max(y0, 0), min(x1, size), min(y1, size))


@pytest.mark.parametrize("alias", ["conv3", "conv8", "conv9", "conv13", "conv15"])
def test_resnet_field_equals_input_gradient_support(alias):
    loaded = load_model("cifar-resnet20")
    _positive(loaded.module)
    size = 64
    loaded.preprocessing = Preprocessing(input_size=(size, size), geometry="resize", resize=None)
    layer = trace(loaded).lookup(alias)
    y = x = layer.map_h // 2
    for channel in (0, layer.channels - 1):
        expected = _clip(layer.field.box(channel, y, x), size)
        assert _gradient_support(loaded.module, layer.name, channel, y, x, size) == expected


def test_concat_branches_keep_their_own_fields():
    from tinymodels import Concat

    module = _positive(Concat())
    size = 32
    graph = trace(_loaded(module, size))
    cat = graph.lookup("cat")
    sizes = cat.field.sizes()[:, 0].tolist()
    assert sizes == [3, 3, 7, 7]  # 1x1 branch vs 3x3 branch after a stride-2 stem
    assert cat.rf_size == 7
    for channel in range(4):
        expected = _clip(cat.field.box(channel, 8, 8), size)
        assert _gradient_support(module, "cat", channel, 8, 8, size) == expected
    head = graph.lookup("head")
    assert head.rf_size == 11


def _support_of_linear_positive(module, node, channel, y, x, size):
    """Input-gradient support of one unit in a network made linear and positive (see _positive):
    a tiny input keeps ReLU6-style clamps out of saturation, so every path carries gradient."""
    from torchvision.models.feature_extraction import create_feature_extractor

    gm = create_feature_extractor(module, return_nodes={node: "out"})
    inp = torch.full((1, 3, size, size), 1e-12, requires_grad=True)
    gm(inp)["out"][0, channel, y, x].backward()
    g = inp.grad[0].abs().sum(0).numpy()
    rows, cols = np.nonzero(g.sum(1))[0], np.nonzero(g.sum(0))[0]
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


def test_functional_convolutions_and_pools():
    """F.conv2d with dilation and groups, F.max_pool2d with dilation: fields by hand and by gradient;
    an upsampling (F.interpolate) yields no field and says why, and so does what follows it."""
    loaded = load_model("python:tinymodels:functional", preprocessing=Preprocessing(input_size=(40, 40)))
    graph = trace(loaded)
    # conv 3x3 dilation 2, padding 2: size 5, offset -2; depthwise 5x5 stride 2, padding 2: 5 + 4 = 9, -2 - 2 = -4;
    # max pool 3x3 dilation 2 (span 5), padding 1: 9 + 4 * 2 = 17, -4 - 1 * 2 = -6
    assert [(l.rf_size, l.rf_stride, l.rf_offset) for l in graph.layers[:5]] == [
        (5, 1, -2), (5, 1, -2), (9, 2, -4), (17, 2, -6), (17, 2, -6)]
    # aliases name a convolution's rectified output, as for modules
    assert [l.name for l in graph.layers if l.alias and l.alias.startswith("conv")] == ["relu", "conv2d_1", "conv2d_2"]
    for name in ("conv2d", "conv2d_1"):
        layer = graph.lookup(name)
        y = x = layer.map_h // 2
        for channel in range(layer.channels):
            expected = _clip(layer.field.box(channel, y, x), 40)
            assert _support_of_linear_positive(loaded.module, name, channel, y, x, 40) == expected
    for name in ("interpolate", "add"):
        layer = graph.lookup(name)
        assert layer.field is None and layer.field_note == "interpolate at node interpolate: its spatial effect is not modelled"


@pytest.mark.parametrize("spec, size, aliases", [
    ("timm:mobilenetv2_100", 96, ["conv5", "conv11", "conv14"]),  # depthwise 3x3, stride 2 and 1
    ("timm:resnet18?output_stride=8", 224, ["conv11", "conv12"]),  # layer3: dilation 2 instead of stride
])
def test_timm_depthwise_and_dilated_fields_equal_gradient_support(spec, size, aliases):
    loaded = load_model(spec)
    _positive(loaded.module)
    # a max pool passes gradient to one position of its window only; an average pool of the same
    # geometry has the same field and passes it to all
    for parent in list(loaded.module.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
    loaded.preprocessing = Preprocessing(input_size=(size, size), geometry="resize", resize=None)
    graph = trace(loaded)
    for alias in aliases:
        layer = graph.lookup(alias)
        assert layer.field is not None, layer.field_note
        y = x = layer.map_h // 2
        for channel in (0, layer.channels - 1):
            expected = _clip(layer.field.box(channel, y, x), size)
            assert _support_of_linear_positive(loaded.module, layer.name, channel, y, x, size) == expected, alias
    if "output_stride" in spec:
        assert graph.lookup("conv11").rf_stride == 8 and graph.lookup("conv12").rf_size == 147


def test_boxes_by_hand_and_for_channels_that_see_nothing():
    # stride 2, channel 0 field [-1, 2) x [-1, 2); channel 1 sees no input (a zero-padded channel)
    f = Field(np.array([[-1.0, -1.0], [np.inf, np.inf]]), np.array([[2.0, 2.0], [-np.inf, -np.inf]]), np.array([2.0, 2.0]))
    assert f.boxes([0, 0, 1], [0, 3, 3], [0, 2, 2]).tolist() == [[-1, -1, 2, 2], [3, 5, 6, 8], [4, 6, 4, 6]]
    assert f.box(1, 3, 2) == (4, 6, 4, 6)  # empty: x0 == x1
