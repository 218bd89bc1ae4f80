"""Backbones for the WSSS pipeline: torchvision ResNets (weights from a path, or random) and a tiny CNN.

Every backbone maps ``[B, 3, H, W] -> [B, C, ceil(H / s), ceil(W / s)]`` (its strided convolutions round up, so
cell ``i`` covers pixels ``[s i, s i + s)``: see :mod:`grmseg.pipeline.geometry`) and exposes ``out_channels``
(C) and ``output_stride`` (s). ``levels(x)`` returns the feature map after every stage (IRN's boundary branch
reads them all), with ``level_channels`` and ``level_strides``; the last level is the output.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from grmseg._optional import optional_import

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONES = ("tiny", *RESNETS)


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """A small CNN for the synthetic data on a CPU: five 3x3 conv-BN-ReLU, output stride 4.

    The receptive field (31 px with ``dilation=1``) is kept near the size of the objects, so that the class
    evidence stays where the object is (what makes CAMs localise); ``dilation`` widens the last two convs.

    Args:
        width: channels of the first stage; the output has ``4 * width`` channels.
        dilation: dilation of the last two convs (receptive field 15 + 16 * dilation px).
    """

    def __init__(self, width: int = 16, dilation: int = 1) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(3, w, stride=2), _conv_bn(w, 2 * w, stride=2), _conv_bn(2 * w, 2 * w),
            _conv_bn(2 * w, 4 * w, dilation=dilation), _conv_bn(4 * w, 4 * w, dilation=dilation),
        )
        self.out_channels = 4 * w
        self.output_stride = 4
        self.level_channels = (w, 2 * w, 2 * w, 4 * w, 4 * w)
        self.level_strides = (2, 4, 4, 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, 4 * width, ceil(H / 4), ceil(W / 4)]``."""
        return self.features(x)

    def levels(self, x: Tensor) -> list[Tensor]:
        """The output of each of the five convs (strides 2, 4, 4, 4, 4)."""
        out = []
        for layer in self.features:
            x = layer(x)
            out.append(x)
        return out


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and fc, at output stride 16 (layer4 stride 1, as in IRN) or 32.

    Args:
        name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        weights_path: a torchvision ``state_dict`` (e.g. ImageNet weights downloaded beforehand); keys of
            ``fc`` are ignored. None: random initialisation. Weights are never downloaded.
        output_stride: 16 or 32.
    """

    def __init__(self, name: str = "resnet50", weights_path: str | os.PathLike | None = None,
                 output_stride: int = 16) -> None:
        super().__init__()
        torchvision = optional_import("torchvision.models", "the ResNet backbones")

        if name not in RESNETS:
            raise ValueError(f"ResNetBackbone: name must be one of {list(RESNETS)}, got {name!r}")
        if output_stride not in (16, 32):
            raise ValueError(f"ResNetBackbone: output_stride must be 16 or 32, got {output_stride}")
        net = getattr(torchvision, name)(weights=None)
        if weights_path is not None:
            if not os.path.isfile(weights_path):
                raise FileNotFoundError(f"ResNetBackbone: weights file {str(weights_path)!r} does not exist")
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(f"ResNetBackbone: weights {str(weights_path)!r} do not fit {name}: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        if output_stride == 16:
            block = net.layer4[0]
            conv = block.conv2 if hasattr(block, "conv3") else block.conv1  # Bottleneck strides in conv2
            conv.stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features
        self.output_stride = output_stride
        widths = [m.conv1.out_channels * (4 if hasattr(m, "conv3") else 1) for m in
                  (net.layer1[0], net.layer2[0], net.layer3[0], net.layer4[0])]
        self.level_channels = (64, *widths)
        self.level_strides = (4, 4, 8, 16, output_stride)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, C, H / s, W / s]`` (C = 512 for resnet18/34, 2048 for resnet50/101)."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def levels(self, x: Tensor) -> list[Tensor]:
        """Stem (after the max pool), layer1, layer2, layer3, layer4 (IRN's stage1..stage5)."""
        out = [self.stem(x)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out.append(layer(out[-1]))
        return out


def build_backbone(name: str = "tiny", width: int = 16, weights_path: str | os.PathLike | None = None,
                   output_stride: int = 16) -> nn.Module:
    """``"tiny"`` (:class:`TinyBackbone` of ``width``) or a ResNet (:class:`ResNetBackbone`)."""
    if name == "tiny":
        if weights_path is not None:
            raise ValueError("build_backbone: the tiny backbone takes no weights_path (it trains from scratch)")
        return TinyBackbone(width)
    if name in RESNETS:
        return ResNetBackbone(name, weights_path, output_stride)
    raise ValueError(f"build_backbone: name must be one of {list(BACKBONES)}, got {name!r}")
