"""The scaled-MNIST network of developer0hye/PyTorch-Deformable-Convolution-v2 (feature part): five 3x3 convs.

::

    layer1  conv3x3 C_in->32 (bias) + ReLU + max-pool 2x2     stride 2
    layer2  conv3x3   32->32 (bias) + ReLU + max-pool 2x2     stride 4
    layer3  conv3x3   32->32 (bias) + ReLU                    stride 4
    layer4  conv3x3   32->32 (bias) + ReLU                    stride 4   (deformable by default)
    layer5  conv3x3   32->32 (bias) + ReLU                    stride 4   (deformable by default)

No BatchNorm, as published. On a 28x28 digit the last three layers work at 7x7. The classifier (global
average pooling + Linear(32, classes)) belongs to the classification task; with 1 input channel and 10
classes the plain network has 37,642 parameters, and each deformable layer adds an offset predictor
(conv3x3 32->18 with bias: 5,202 parameters; 32->27, 7,803, with ``deform.modulated``).

``deform.stages`` picks the deformable layers (default ``[4, 5]``: conv4 and conv5, as published). What
differs from the published layer (``DeformableConv2d`` of that repository): dcn's
:class:`~dcn.ops.DeformConv2dPack` does not clamp offsets (the published one clamps them to a quarter
of the input size), and its DCN v2 mask is ``sigmoid`` (starts at 0.5) where the published one uses
``2 * sigmoid`` (starts at 1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

from torch import nn

from dcn.backbones.deformable import DeformOptions
from dcn.backbones.features import FeatureInfo, SequentialBackbone

__all__ = ["FiveConvNet"]

_WIDTH = 32
_POOLED = (1, 2)  # a 2x2 max-pool follows these layers


def _conv_relu(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True),
        relu=nn.ReLU(inplace=True),
    )
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class FiveConvNet(SequentialBackbone):
    """Five 3x3 conv + ReLU layers of 32 channels, max-pooled after the first two (see the module docstring).

    Args:
        in_channels: channels of the input images (1 for MNIST).
        deform: ``deform`` config block (dict, DictConfig, :class:`DeformOptions`, bool or None);
            stages are 1..5 (= ``layer1``..``layer5``); ``stages: null`` means ``[5]``.
        pretrained: None, or a path to a state_dict / Lightning checkpoint of a FiveConvNet.

    Forward: ``x (Tensor[N, in_channels, H, W]) -> {"layer1": [N, 32, H/2, W/2], "layer2": [N, 32, H/4, W/4],
    ..., "layer5": [N, 32, H/4, W/4]}`` (floor division by the pools; plus ``"extra"`` when
    ``deform.extra_layers > 0``).
    """

    STAGES = (1, 2, 3, 4, 5)
    stem_weight_key = "layer1.conv.weight"

    def __init__(
        self,
        in_channels: int = 1,
        deform: Any = DeformOptions(stages=(4, 5)),
        pretrained: Optional[str] = None,
    ) -> None:
        super().__init__()
        options = self._begin(in_channels, deform, self.STAGES, "five_conv_net")

        self.feature_info = []
        for i in self.STAGES:
            setattr(
                self, f"layer{i}", _conv_relu(in_channels if i == 1 else _WIDTH, _WIDTH, pool=i in _POOLED)
            )
            stride = 2 ** sum(1 for p in _POOLED if p <= i)
            self.feature_info.append(FeatureInfo(f"layer{i}", _WIDTH, stride))
        if options.extra_layers:
            self.extra = nn.Sequential(
                *[_conv_relu(_WIDTH, _WIDTH, pool=False) for _ in range(options.extra_layers)]
            )
            self.feature_info.append(FeatureInfo("extra", _WIDTH, self.feature_info[-1].stride))

        self._finish(pretrained)
