"""The original study's Experiment-1 network (feature part): four 3x3 conv + BN + ReLU layers, the last
deformable.

::

    layer1  conv3x3 C_in->32 (bias)  + BN + ReLU
    layer2  conv3x3   32->64 (bias)  + BN + ReLU
    layer3  conv3x3   64->128 (bias) + BN + ReLU
    layer4  DeformConv2dPack 128->128, no bias (offset predictor: conv3x3 128->18 with bias) + BN + ReLU

All convs have stride 1 and padding 1, so every feature keeps the input resolution (stride 1).
The classifier (global average pooling + Linear(128, classes)) belongs to the classification task;
with 1 input channel and 10 classes the whole model has exactly 262,876 parameters.

The deform switch works as for the torchvision backbones: ``deform.stages`` picks which of the
four layers are deformable (default ``[4]``, the original study's choice), ``deform.enabled=false`` leaves
``layer4`` a plain ``nn.Conv2d(128, 128, 3, padding=1, bias=False)`` with the same weight shape.
"""

from __future__ import annotations

from typing import Any, Optional

from dcn.backbones.deformable import DeformOptions, conv_bn_relu, extra_layers
from dcn.backbones.features import FeatureInfo, SequentialBackbone

__all__ = ["SeedNet"]

_WIDTHS = (32, 64, 128, 128)


class SeedNet(SequentialBackbone):
    """The original study's small deformable classifier body (see the module docstring).

    Args:
        in_channels: channels of the input images (1 for MNIST/digits).
        deform: ``deform`` config block (dict, DictConfig, :class:`DeformOptions`, bool or None);
            stages are 1..4 (= ``layer1``..``layer4``).
        pretrained: None, or a path to a state_dict / Lightning checkpoint of a SeedNet.

    Forward: ``x (Tensor[N, in_channels, H, W]) -> {"layer1": [N, 32, H, W], ..., "layer4": [N, 128, H, W]}``
    (plus ``"extra": [N, 128, H, W]`` when ``deform.extra_layers > 0``).
    """

    STAGES = (1, 2, 3, 4)
    stem_weight_key = "layer1.conv.weight"

    def __init__(
        self,
        in_channels: int = 1,
        deform: Any = DeformOptions(),
        pretrained: Optional[str] = None,
    ) -> None:
        super().__init__()
        options = self._begin(in_channels, deform, self.STAGES, "seed_net")

        widths = (in_channels,) + _WIDTHS
        for i in self.STAGES:
            # The original study's first three convs carry a bias; the deformable one does not (BN follows).
            setattr(self, f"layer{i}", conv_bn_relu(widths[i - 1], widths[i], bias=i < 4))
        self.feature_info = [FeatureInfo(f"layer{i}", widths[i], 1) for i in self.STAGES]
        if options.extra_layers:
            self.extra = extra_layers(_WIDTHS[-1], options.extra_layers)
            self.feature_info.append(FeatureInfo("extra", _WIDTHS[-1], 1))

        self._finish(pretrained)
