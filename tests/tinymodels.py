"""Tiny CNNs with hand-set weights for tests (importable as python:tinymodels:NAME)."""
from __future__ import annotations

import torch
import torch.nn as nn


class TinyCNN(nn.Module):
    """conv1 (4 ch, 3x3) -> relu -> maxpool 2 -> conv2 (6 ch, 3x3) -> relu -> gap -> fc(3).

    conv1 channel 0 sees only red (R - (G + B) / 2), channel 1 is a vertical luminance edge,
    channel 2 is always zero (dead), channel 3 is random.
    """

    def __init__(self, classes: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)
        with torch.no_grad():
            w = torch.zeros(4, 3, 3, 3)
            w[0, 0] = 1.0 / 9
            w[0, 1] = -0.5 / 9
            w[0, 2] = -0.5 / 9
            w[1, :, :, 0] = -1.0 / 3
            w[1, :, :, 2] = 1.0 / 3
            w[3] = torch.randn(3, 3, 3, generator=g) * 0.3
            self.conv1.weight.copy_(w)
            self.conv1.bias.copy_(torch.tensor([0.0, -0.01, -100.0, 0.0]))
            self.conv2.weight.copy_(torch.randn(6, 4, 3, 3, generator=g) * 0.3)
            self.conv2.bias.zero_()
            self.fc.weight.copy_(torch.randn(classes, 6, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        return self.fc(self.gap(x).flatten(1))


def tiny_cnn():
    return TinyCNN()


class Concat(nn.Module):
    """Fire-style module: a 1x1 branch and a 3x3 branch concatenated on channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b1 = nn.Conv2d(4, 2, 1)
        self.b3 = nn.Conv2d(4, 2, 3, padding=1)
        self.head = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([torch.relu(self.b1(x)), torch.relu(self.b3(x))], 1)
        return self.head(x)


def concat_model():
    return Concat()


class WideCNN(nn.Module):
    """Random (seeded) 32-channel convs for retrieval tests, where top-5 of 32 is far from chance."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x)))))
        return self.fc(self.gap(x).flatten(1))


def wide_cnn():
    return WideCNN()


class InplaceCNN(nn.Module):
    """In-place ReLUs: nothing but relu1 reads conv1's output, while relu2 rectifies conv2's
    output in place and the sum then reads it again (so it sees the rectified values)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        y = self.conv2(x)
        z = self.relu2(y)
        return self.conv3(z + y)


def inplace_cnn():
    return InplaceCNN()


class Functional(nn.Module):
    """Convolutions and pools called as functions: a dilated conv, a grouped (depthwise) conv and a
    dilated max pool, then an upsampling whose spatial effect neuronindex does not model."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w1 = nn.Parameter(torch.rand(4, 3, 3, 3, generator=g) + 0.1)
        self.w2 = nn.Parameter(torch.rand(4, 1, 5, 5, generator=g) + 0.1)
        self.w3 = nn.Parameter(torch.rand(2, 4, 1, 1, generator=g) + 0.1)

    def forward(self, x):
        import torch.nn.functional as F

        x = F.relu(F.conv2d(x, self.w1, padding=2, dilation=2))
        x = F.conv2d(x, self.w2, stride=2, padding=2, groups=4)
        x = F.max_pool2d(x, 3, stride=1, padding=1, dilation=2)
        x = F.conv2d(x, self.w3)
        return F.interpolate(x, scale_factor=2.0) + 1.0


def functional():
    return Functional()


class Planted(nn.Module):
    """conv1: six 1x1 channels that mix only the red and green inputs (a known rank-2 layer),
    then a head. On flat-colour images every position of a map is equal, so the image x channel
    matrix of spatial maxima is exactly rank 2."""

    MIX = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0], [2.0, 0.5], [0.3, -2.0]]

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1, bias=False)
        self.head = nn.Conv2d(6, 2, 1)
        with torch.no_grad():
            w = torch.zeros(6, 3, 1, 1)
            w[:, :2, 0, 0] = torch.tensor(self.MIX)
            self.conv1.weight.copy_(w)
            self.head.weight.fill_(0.1)
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.conv1(x)).mean((2, 3))


def planted():
    return Planted()


class ColourClassifier(nn.Module):
    """Three classes by mean colour: logit k = mean over the image of relu(channel k - the mean of
    the other two). Class 0 is red, 1 green, 2 blue (hand-set, for activation maximisation)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.conv.weight.copy_((torch.eye(3) * 1.5 - 0.5).view(3, 3, 1, 1))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.eye(3))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.gap(self.relu(self.conv(x))).flatten(1))


def colour_classifier():
    return ColourClassifier()


class PlantedParts(nn.Module):
    """conv1: eight 1x1 channels, each a fixed non-negative mixture of the red, green and blue
    inputs (no bias): on images read without normalisation the layer's activation vector at a
    position is exactly PARTS' @ (r, g, b), a non-negative mixture of 3 known parts."""

    PARTS = [[1.0, 0.8, 0.0, 0.1, 0.0, 0.5, 0.0, 0.2],
             [0.0, 0.3, 1.0, 0.9, 0.0, 0.0, 0.4, 0.1],
             [0.1, 0.0, 0.0, 0.2, 1.0, 0.6, 0.7, 0.0]]

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1, bias=False)
        self.head = nn.Conv2d(8, 2, 1)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor(self.PARTS).T.reshape(8, 3, 1, 1))
            self.head.weight.fill_(0.1)
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.conv1(x)).mean((2, 3))


def planted_parts():
    return PlantedParts()
