"""ResNet-18/34/50/101 backbones from ``torchvision.models`` with the deformable switch.

The network is torchvision's (``fc`` and ``avgpool`` dropped), so its state_dict names are
torchvision's and its ImageNet weights load unchanged. Three things are applied after
construction, in this order, each as data rather than forked network code:

1. ``output_stride`` (None = no dilation; 16 or 8 with the ImageNet stem): the last one or two
   stages trade their stride 2 for dilation, as torchvision's ``replace_stride_with_dilation``
   does — but patched onto the built convs, so it also works for BasicBlock ResNets (18/34),
   which torchvision refuses.
2. ``stem="small"`` (for 28x28 / 64x64 images): the 7x7 stride-2 conv and the max-pool become one
   3x3 stride-1 conv, so every stride is 4x smaller (output stride 8 undilated, 4 or 2; a
   28x28 input gives a 4x4 ``layer4``). The 3x3 stem conv is new: a pretrained file's 7x7
   ``conv1.weight`` is skipped (reported), the rest of the network loads.
3. ``deform``: every 3x3 conv of the chosen stages (1..4 = ``layer1``..``layer4``; paper: ``[4]``)
   becomes a ``DeformConv2dPack`` with the same weight, stride and dilation; ``extra_layers``
   appends N 3x3 conv+BN+ReLU layers (deformable when enabled) after ``layer4``, at its width
   (512 for ResNet-18/34; 2048 for ResNet-50/101, i.e. 37.7M weights per layer).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Optional

import torchvision
from torch import Tensor, nn

from dcn.backbones.deformable import DeformOptions, extra_layers
from dcn.backbones.features import Backbone, FeatureInfo

__all__ = ["ResNetBackbone", "dilate_stage"]

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
STEMS = ("imagenet", "small")


class ResNetBackbone(Backbone):
    """A torchvision ResNet as a multi-scale feature extractor.

    Args:
        arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        in_channels: input image channels; the stem conv is rebuilt for values other than 3
            (and pretrained stem weights adapted: summed over RGB for 1 channel).
        deform: ``deform`` config block (dict, DictConfig, :class:`DeformOptions`, bool or None).
        output_stride: stride of ``layer4``'s output; None keeps the network undilated (32 with
            the ImageNet stem, 8 with the small one). ImageNet stem: 32, 16 or 8; small stem: 8, 4
            or 2. Values below the undilated one dilate the last stage(s) instead of striding.
        pretrained: None, ``"torchvision"`` (ImageNet weights) or a path to a state_dict /
            Lightning checkpoint (see :mod:`dcn.backbones.pretrained`).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"small"`` (3x3/1 conv, no pool)
            for small images.

    Forward: ``x (Tensor[N, in_channels, H, W]) -> {"stem", "layer1", ..., "layer4"[, "extra"]}``
    with the channels and strides in ``feature_info``; e.g. resnet50 at output stride 32:
    stem 64/2, layer1 256/4, layer2 512/8, layer3 1024/16, layer4 2048/32.
    """

    STAGES = (1, 2, 3, 4)
    stem_weight_key = "conv1.weight"

    def __init__(
        self,
        arch: str = "resnet50",
        in_channels: int = 3,
        deform: Any = DeformOptions(),
        output_stride: Optional[int] = None,
        pretrained: Optional[str] = None,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet arch {arch!r}; expected one of {list(ARCHS)}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {list(STEMS)}")
        options = self._begin(in_channels, deform, self.STAGES, arch)
        stem_stride = 4 if stem == "imagenet" else 1  # stride at layer1's input
        native = stem_stride * 8
        allowed = (native, native // 2, native // 4)
        if output_stride is None:
            output_stride = native
        if isinstance(output_stride, bool) or output_stride not in allowed:
            raise ValueError(
                f"output_stride={output_stride!r} is not possible for {arch} with stem={stem!r}; "
                f"choose from {list(allowed)}"
            )
        self.arch, self.stem, self.output_stride = arch, stem, output_stride

        net = getattr(torchvision.models, arch)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if stem == "small":
            self.conv1 = _stem_conv(in_channels, 3, 1)
            self.maxpool = nn.Identity()
            self.replaced_keys = ("conv1.weight",)
        elif in_channels != 3:
            self.conv1 = _stem_conv(in_channels, 7, 2)

        # Dilate the deepest stages until the output stride is reached (layer4 first).
        n_dilated = {native: 0, native // 2: 1, native // 4: 2}[output_stride]
        stride, dilation = stem_stride, 1
        widths = [64 * net.layer1[0].expansion * 2**i for i in range(4)]
        self.feature_info = [FeatureInfo("stem", 64, stem_stride // 2 if stem == "imagenet" else 1)]
        for i in self.STAGES:
            if i >= 2:
                if i > 4 - n_dilated:
                    dilate_stage(getattr(self, f"layer{i}"), dilation, dilation * 2)
                    dilation *= 2
                else:
                    stride *= 2
            self.feature_info.append(FeatureInfo(f"layer{i}", widths[i - 1], stride))
        if options.extra_layers:
            self.extra = extra_layers(widths[-1], options.extra_layers)
            self.feature_info.append(FeatureInfo("extra", widths[-1], stride))

        self._finish(pretrained, torchvision_arch=arch)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        self._check_input(x)
        out: Dict[str, Tensor] = OrderedDict()
        x = self.relu(self.bn1(self.conv1(x)))
        out["stem"] = x
        x = self.maxpool(x)
        for info in self.feature_info[1:]:
            x = getattr(self, info.name)(x)
            out[info.name] = x
        return out


def _stem_conv(in_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, 64, kernel_size, stride, kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    return conv


def dilate_stage(stage: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Make a stride-2 ResNet stage stride 1 and dilated, in place, for Basic and Bottleneck blocks.

    Matches torchvision's ``replace_stride_with_dilation``: the conv that carried the stride keeps
    ``previous_dilation``, every later 3x3 conv of the stage gets ``dilation``, and the shortcut's
    1x1 conv loses its stride. Padding becomes ``dilation * (k - 1) / 2`` so sizes are kept.
    """
    strided_seen = False
    for block in stage:
        for name, conv in block.named_modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            if tuple(conv.kernel_size) == (1, 1):
                conv.stride = (1, 1)  # the downsample shortcut (other 1x1 convs have stride 1)
                continue
            d = dilation
            if tuple(conv.stride) != (1, 1):
                if strided_seen:
                    raise ValueError(f"stage has more than one strided 3x3 conv ({name})")
                strided_seen, d = True, previous_dilation
                conv.stride = (1, 1)
            conv.dilation = (d, d)
            conv.padding = tuple(d * (k - 1) // 2 for k in conv.kernel_size)
    if not strided_seen:
        raise ValueError("dilate_stage needs a stage whose first block has a strided 3x3 conv")
