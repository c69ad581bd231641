"""VGG-11/16 (batch-norm variants) backbones from ``torchvision.models`` with the deformable switch.

``features`` is torchvision's own ``vgg.make_layers(cfgs[...], batch_norm=True)`` with
torchvision's init — what ``vgg11_bn().features`` is, without building (and initialising) the
120M-parameter classifier we would drop — so state_dict names are torchvision's (``features.N.*``)
and its ImageNet weights load unchanged. The
five stages are the conv blocks split at the max-pools, each ending with its pool; ``deform.stages``
(1..5) picks whose 3x3 convs become ``DeformConv2dPack`` and ``extra_layers`` appends N 3x3 conv+BN+ReLU
layers (deformable when enabled) after stage 5.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor, nn
from torchvision.models import vgg

from dcn.backbones.deformable import DeformOptions, extra_layers
from dcn.backbones.features import Backbone, FeatureInfo

__all__ = ["VGGBackbone"]

ARCHS = ("vgg11", "vgg16")
_TORCHVISION_CFG = {"vgg11": "A", "vgg16": "D"}  # keys of torchvision.models.vgg.cfgs


class VGGBackbone(Backbone):
    """A torchvision VGG (with BatchNorm) as a multi-scale feature extractor.

    Args:
        arch: ``"vgg11"`` or ``"vgg16"`` (built as torchvision's ``vgg11_bn`` / ``vgg16_bn``).
        in_channels: input image channels; the first conv is rebuilt for values other than 3
            (and pretrained weights adapted: summed over RGB for 1 channel).
        deform: ``deform`` config block (dict, DictConfig, :class:`DeformOptions`, bool or None);
            stages are 1..5.
        pretrained: None, ``"torchvision"`` (ImageNet weights of the ``_bn`` model) or a path to a
            state_dict / Lightning checkpoint (see :mod:`dcn.backbones.pretrained`).

    Forward: ``x (Tensor[N, in_channels, H, W]) -> {"stage1": [N, 64, H/2, W/2], "stage2": 128 at /4,
    "stage3": 256 at /8, "stage4": 512 at /16, "stage5": 512 at /32[, "extra": 512 at /32]}``.
    H and W must be at least 32 (five 2x2 max-pools).
    """

    STAGES = (1, 2, 3, 4, 5)
    stem_weight_key = "features.0.weight"
    MIN_SIZE = 32

    def __init__(
        self,
        arch: str = "vgg16",
        in_channels: int = 3,
        deform: Any = DeformOptions(),
        pretrained: Optional[str] = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown VGG arch {arch!r}; expected one of {list(ARCHS)}")
        options = self._begin(in_channels, deform, self.STAGES, arch)
        self.arch = arch

        self.features = vgg.make_layers(vgg.cfgs[_TORCHVISION_CFG[arch]], batch_norm=True)
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, self.features[0].out_channels, 3, padding=1)
        for m in self.features.modules():  # torchvision.models.VGG's init, for the features
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        # Stage k = features[start:end], ending with its max-pool.
        self._bounds: List[Tuple[int, int]] = []
        start = 0
        for i, m in enumerate(self.features):
            if isinstance(m, nn.MaxPool2d):
                self._bounds.append((start, i + 1))
                start = i + 1
        assert len(self._bounds) == len(self.STAGES), self._bounds
        self.feature_info = []
        channels = in_channels
        for k, (a, b) in enumerate(self._bounds, start=1):
            channels = [m.out_channels for m in self.features[a:b] if isinstance(m, nn.Conv2d)][-1]
            self.feature_info.append(FeatureInfo(f"stage{k}", channels, 2**k))
        if options.extra_layers:
            self.extra = extra_layers(channels, options.extra_layers)
            self.feature_info.append(FeatureInfo("extra", channels, 2 ** len(self.STAGES)))

        self._finish(
            pretrained,
            stage_modules=lambda k: [f"features.{i}" for i in range(*self._bounds[k - 1])],
            torchvision_arch=f"{arch}_bn",
        )

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        self._check_input(x)
        if min(x.shape[-2:]) < self.MIN_SIZE:
            raise ValueError(
                f"{self.arch} needs inputs of at least {self.MIN_SIZE}x{self.MIN_SIZE} (five 2x2 max-pools), "
                f"got {tuple(x.shape[-2:])}; resize the images or use a ResNet with stem='small'"
            )
        out: Dict[str, Tensor] = OrderedDict()
        for k, (a, b) in enumerate(self._bounds, start=1):
            for i in range(a, b):
                x = self.features[i](x)
            out[f"stage{k}"] = x
        if hasattr(self, "extra"):
            x = self.extra(x)
            out["extra"] = x
        return out
