"""DeepLabV3 and DeepLabV3+ over any dcn backbone (Chen et al., 2017 and 2018).

The backbone's output stride (16 or 8 for the paper's settings, via dilated last stages; deformable
convs keep their dilation) sets the ASPP rates: (6, 12, 18) at output stride 16, doubled at 8 —
``rate * 16 / output_stride`` in general. ASPP is torchvision's (1x1 conv, three atrous 3x3 convs,
image pooling; BatchNorm + ReLU each; concatenated and projected to 256 channels, then dropout).

- ``head="deeplabv3"``: ASPP -> 3x3 conv -> 1x1 classifier on the deepest feature, upsampled
  bilinearly to the input size.
- ``head="deeplabv3plus"``: the ASPP output is upsampled to the stride-4 feature map and
  concatenated with that map projected to 48 channels; two 3x3 convs (256 channels) and a 1x1
  classifier follow, then bilinear upsampling to the input size.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

__all__ = ["HEADS", "DeepLab", "DeepLabV3Head", "DeepLabV3PlusHead", "aspp_rates_for", "build_aspp"]

HEADS = ("deeplabv3plus", "deeplabv3")
_BASE_RATES = (6, 12, 18)  # the papers' rates at output stride 16


def aspp_rates_for(output_stride: int) -> Tuple[int, ...]:
    """The ASPP atrous rates for a backbone output stride: (6, 12, 18) at 16, (12, 24, 36) at 8.

    Rates scale with the feature resolution so they cover the same image extent; strides that do not
    divide 16 (or are divided by it, e.g. 32) must give integer rates.
    """
    rates = [r * 16 / output_stride for r in _BASE_RATES]
    if any(r != int(r) or r < 1 for r in rates):
        raise ValueError(
            f"no integer ASPP rates for output stride {output_stride} (the paper's {list(_BASE_RATES)} "
            "at 16, scaled); set task.aspp_rates explicitly"
        )
    return tuple(int(r) for r in rates)


def build_aspp(in_channels: int, rates: Sequence[int], channels: int = 256, dropout: float = 0.1) -> ASPP:
    """torchvision's ASPP with a configurable dropout after the projection (torchvision fixes 0.5;
    the DeepLabV3+ reference uses 0.1).

    ``Tensor[N, in_channels, h, w] -> Tensor[N, channels, h, w]``. Its image-pooling branch has a
    BatchNorm over one value per channel and sample, so training needs batches of at least 2.
    """
    if not 0 <= dropout < 1:
        raise ValueError(f"task.aspp_dropout must be in [0, 1), got {dropout}")
    rates = tuple(int(r) for r in rates)
    if len(rates) == 0 or any(r < 1 for r in rates):
        raise ValueError(f"task.aspp_rates must be positive integers, got {list(rates)}")
    aspp = ASPP(in_channels, rates, channels)
    aspp.project[-1] = nn.Dropout(dropout)
    return aspp


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DeepLabV3Head(nn.Module):
    """``deep (Tensor[N, in_channels, h, w]) -> logits Tensor[N, num_classes, h, w]``: ASPP, 3x3 conv,
    1x1 classifier (torchvision's ``DeepLabHead`` layout)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[int],
        channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.aspp = build_aspp(in_channels, rates, channels, dropout)
        self.conv = _conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, deep: Tensor, low_level: Optional[Tensor] = None) -> Tensor:
        return self.classifier(self.conv(self.aspp(deep)))


class DeepLabV3PlusHead(nn.Module):
    """``(deep Tensor[N, in_channels, h, w], low_level Tensor[N, low_level_in, H4, W4]) -> logits
    Tensor[N, num_classes, H4, W4]``: ASPP on ``deep``, upsampled to the low-level map, concatenated
    with its 1x1 projection to ``low_level_channels``; two 3x3 convs and a 1x1 classifier."""

    def __init__(
        self,
        in_channels: int,
        low_level_in: int,
        num_classes: int,
        rates: Sequence[int],
        channels: int = 256,
        dropout: float = 0.1,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
    ) -> None:
        super().__init__()
        self.aspp = build_aspp(in_channels, rates, channels, dropout)
        self.low_level = _conv_bn_relu(low_level_in, low_level_channels, 1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(channels + low_level_channels, decoder_channels, 3),
            _conv_bn_relu(decoder_channels, decoder_channels, 3),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, deep: Tensor, low_level: Optional[Tensor] = None) -> Tensor:
        if low_level is None:
            raise ValueError("DeepLabV3PlusHead needs the low-level (stride-4) feature map")
        x = self.aspp(deep)
        x = F.interpolate(x, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, self.low_level(low_level)], dim=1)
        return self.classifier(self.decoder(x))


class DeepLab(nn.Module):
    """A dcn backbone with a DeepLab head:
    ``images Tensor[N, C, H, W] -> logits Tensor[N, num_classes, H, W]``.

    Args:
        backbone: a dcn backbone (``forward`` returns named features; ``feature_info`` gives their
            channels and strides), e.g. ``ResNetBackbone(output_stride=16)``.
        num_classes: output classes.
        head: ``"deeplabv3plus"`` (with the decoder) or ``"deeplabv3"``.
        aspp_rates: atrous rates; None derives them from the backbone's output stride
            (:func:`aspp_rates_for`).
        aspp_channels, aspp_dropout: ASPP width and the dropout after its projection.
        low_level_feature: name of the decoder's low-level feature; None picks the first feature of
            stride 4 (``layer1`` of a ResNet with the ImageNet stem). Ignored by ``deeplabv3``.
        low_level_channels, decoder_channels: the decoder's projection and conv widths (48, 256).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: str = "deeplabv3plus",
        aspp_rates: Optional[Sequence[int]] = None,
        aspp_channels: int = 256,
        aspp_dropout: float = 0.1,
        low_level_feature: Optional[str] = None,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"task.head must be one of {list(HEADS)}, got {head!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        info = getattr(backbone, "feature_info", None)
        if not info:
            raise TypeError(
                f"backbone must be a dcn backbone with feature_info, got {type(backbone).__name__}"
            )
        self.backbone = backbone
        self.head_type = head
        deep = info[-1]
        self.deep_feature = deep.name
        self.aspp_rates = tuple(aspp_rates) if aspp_rates is not None else aspp_rates_for(deep.stride)
        self.low_level_feature: Optional[str] = None
        if head == "deeplabv3":
            self.head: nn.Module = DeepLabV3Head(
                deep.channels, num_classes, self.aspp_rates, aspp_channels, aspp_dropout
            )
        else:
            low = _low_level_info(info, low_level_feature)
            self.low_level_feature = low.name
            self.head = DeepLabV3PlusHead(
                deep.channels,
                low.channels,
                num_classes,
                self.aspp_rates,
                aspp_channels,
                aspp_dropout,
                low_level_channels,
                decoder_channels,
            )

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        low = features[self.low_level_feature] if self.low_level_feature else None
        logits = self.head(features[self.deep_feature], low)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()


def _low_level_info(info: List, name: Optional[str]):
    if name is not None:
        for entry in info:
            if entry.name == name:
                return entry
        raise ValueError(
            f"task.low_level_feature={name!r} is not a backbone feature; choose from {[e.name for e in info]}"
        )
    for entry in info[:-1]:
        if entry.stride == 4:
            return entry
    raise ValueError(
        "DeepLabV3+ needs a stride-4 backbone feature for its decoder, but the backbone's features are "
        f"{[(e.name, e.stride) for e in info]}; set task.low_level_feature to one of them, "
        "or task.head=deeplabv3"
    )
