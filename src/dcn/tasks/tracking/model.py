"""SiamRPN over a dcn backbone: shared features, 1x1 adjust, template centre crop, RPN head, anchors.

Geometry. A torchvision ResNet feature of stride ``s`` at index ``k`` is centred on input pixel ``k``*s
(every strided conv and pool has an odd kernel and ``k // 2`` padding; dilated stages keep positions). The
template's feature map is cropped to ``template_feature_size`` (7) cells around the cell nearest the
template centre, the search feature map to the largest odd square around the cell nearest the search
centre. The response cell at the centre of the ``S x S`` map then responds to an object at the search
patch centre *exactly* when ``search_size - template_size`` is a multiple of ``2 * stride`` (127 / 255,
63 / 127, ...): both crops are then off-centre by the same fraction of a pixel, which cancels. Other sizes
are refused, so the anchor grid of :mod:`dcn.tasks.tracking.anchors` is where the network looks.

Only the backbone stages up to ``feature`` are kept (the later ones would cost time for nothing); the
feature must have stride 8 (``backbone.output_stride=8`` for layer3 / layer4, native for layer2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from dcn.images import IMAGENET_MEAN, IMAGENET_STD
from dcn.tasks.tracking.anchors import make_anchors
from dcn.tasks.tracking.rpn_head import DepthwiseRPNHead, UpChannelRPNHead

__all__ = ["HEADS", "ResponseGeometry", "SiamRPN", "truncate_backbone"]

HEADS = ("depthwise", "upchannel")
STRIDE = 8


def _centre_index(size: int, stride: int) -> int:
    """Feature index whose centre ``k * stride + 0.5`` is nearest the patch centre ``size / 2``."""
    return math.floor((size - 1) / 2 / stride + 0.5)


@dataclass(frozen=True)
class ResponseGeometry:
    """Where the feature maps are cropped, and the response map's size, for given patch sizes.

    ``template_slice`` / ``search_slice``: ``(start, stop)`` feature indices kept (rows and columns);
    ``score_size``: side ``S`` of the response map.
    """

    template_size: int
    search_size: int
    stride: int = STRIDE
    template_feature_size: int = 7

    def __post_init__(self) -> None:
        t, n, s, f = self.template_size, self.search_size, self.stride, self.template_feature_size
        if f < 1 or f % 2 == 0:
            raise ValueError(f"template_feature_size must be odd and positive, got {f}")
        if n <= t:
            raise ValueError(f"search_size ({n}) must be larger than template_size ({t})")
        if (n - t) % (2 * s):
            raise ValueError(
                f"search_size - template_size must be a multiple of 2 * stride = {2 * s} so the response map "
                f"is centred on the search patch; got template_size={t}, search_size={n} "
                f"(e.g. 127 / 255, 63 / 127)"
            )
        ft, fs = math.ceil(t / s), math.ceil(n / s)
        ct = _centre_index(t, s)
        if ct - f // 2 < 0 or ct + f // 2 > ft - 1:
            raise ValueError(
                f"template_size={t} gives a {ft}x{ft} feature map at stride {s}: too small for a centred "
                f"{f}x{f} template crop; use a template of at least {(f + 1) * s - 1} pixels"
            )
        cs = _centre_index(n, s)
        half = min(cs, fs - 1 - cs)
        if 2 * half + 1 < f:
            raise ValueError(f"search_size={n} is too small for a {f}x{f} template at stride {s}")
        object.__setattr__(self, "template_slice", (ct - f // 2, ct + f // 2 + 1))
        object.__setattr__(self, "search_slice", (cs - half, cs + half + 1))
        object.__setattr__(self, "score_size", 2 * half + 1 - f + 1)

    template_slice: Tuple[int, int] = field(init=False)
    search_slice: Tuple[int, int] = field(init=False)
    score_size: int = field(init=False)

    def feature_sizes(self) -> Tuple[int, int]:
        """Backbone feature map sides for the template and search patches."""
        return math.ceil(self.template_size / self.stride), math.ceil(self.search_size / self.stride)


def truncate_backbone(backbone: nn.Module, feature: Optional[str]) -> str:
    """Drop, in place, the stages of a dcn backbone after ``feature`` (None: keep all); returns the
    feature's name.

    Raises ValueError when ``feature`` is unknown or a dropped stage holds deformable layers (the
    ``deform.stages`` config would silently do nothing).
    """
    infos = list(getattr(backbone, "feature_info", []))
    names = [info.name for info in infos]
    if not names:
        raise TypeError(f"{type(backbone).__name__} has no feature_info; SiamRPN needs a dcn backbone")
    feature = feature or names[-1]
    if feature not in names:
        raise ValueError(f"task.feature={feature!r} is not a feature of the backbone; choose from {names}")
    dropped = names[names.index(feature) + 1 :]
    deformable = [n for n in getattr(backbone, "deformable_layers", []) if n.split(".")[0] in dropped]
    if deformable:
        raise ValueError(
            f"task.feature={feature!r} drops {dropped}, which hold deformable layers {deformable[:3]}; "
            f"make a used stage deformable instead (e.g. backbone.deform.stages=[{feature[-1]}])"
        )
    for name in dropped:
        delattr(backbone, name)
    backbone.feature_info = infos[: names.index(feature) + 1]
    return feature


class SiamRPN(nn.Module):
    """Siamese region proposal network.

    Args:
        backbone: a dcn backbone (shared by template and search); stages after ``feature`` are removed.
        feature: the backbone feature to use (None: the deepest); its stride must be 8.
        template_size, search_size: patch sides in pixels (SiamRPN: 127, 255).
        head: ``"depthwise"`` (SiamRPN++) or ``"upchannel"`` (original SiamRPN).
        channels: width after the 1x1 adjust layer (256).
        ratios, scales: anchor types (0.33, 0.5, 1, 2, 3; 8).
        template_feature_size: side of the template feature crop (7).

    ``forward(template Tensor[B, 3, T, T], search Tensor[B, 3, N, N])`` (RGB in [0, 1]; normalised inside)
    -> ``cls`` ``Tensor[B, K, S, S]``,
    ``loc`` ``Tensor[B, 4K, S, S]``; ``anchors`` (buffer) is ``Tensor[K * S * S, 4]`` in the same order.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature: Optional[str] = None,
        template_size: int = 127,
        search_size: int = 255,
        head: str = "depthwise",
        channels: int = 256,
        ratios: Sequence[float] = (0.33, 0.5, 1.0, 2.0, 3.0),
        scales: Sequence[float] = (8.0,),
        template_feature_size: int = 7,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"task.head must be one of {list(HEADS)}, got {head!r}")
        self.feature = truncate_backbone(backbone, feature)
        info = backbone.feature_info[-1]
        if info.stride != STRIDE:
            raise ValueError(
                f"SiamRPN needs stride-{STRIDE} features but backbone feature {info.name!r} has stride "
                f"{info.stride}; set backbone.output_stride=8 (dilated layer3/layer4) or task.feature=layer2"
            )
        self.backbone = backbone
        self.geometry = ResponseGeometry(template_size, search_size, STRIDE, template_feature_size)
        self.adjust = nn.Sequential(
            nn.Conv2d(info.channels, channels, 1, bias=False), nn.BatchNorm2d(channels)
        )
        num_anchors = len(ratios) * len(scales)
        if head == "depthwise":
            self.head = DepthwiseRPNHead(num_anchors, channels, channels)
        else:
            self.head = UpChannelRPNHead(num_anchors, channels)
        self.num_anchors = num_anchors
        anchors = make_anchors(self.geometry.score_size, STRIDE, search_size, ratios, scales)
        self.register_buffer("anchors", anchors, persistent=False)
        # Patches come in as RGB in [0, 1] (what the tracker crops); the network sees ImageNet-normalised
        # pixels, so a torchvision-pretrained backbone gets what it expects and callers never normalise.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    @property
    def score_size(self) -> int:
        return self.geometry.score_size

    def _features(self, images: Tensor, size: int, crop: Tuple[int, int], what: str) -> Tensor:
        if images.dim() != 4 or images.shape[-2:] != (size, size):
            raise ValueError(
                f"{what} patches must be Tensor[B, C, {size}, {size}], got {tuple(images.shape)}"
            )
        if images.shape[1] != 3:
            raise ValueError(f"{what} patches must be RGB (3 channels), got {tuple(images.shape)}")
        features = self.adjust(self.backbone((images - self.pixel_mean) / self.pixel_std)[self.feature])
        expected = math.ceil(size / STRIDE)
        if features.shape[-2:] != (expected, expected):
            raise ValueError(
                f"backbone gave a {tuple(features.shape[-2:])} feature map for {size}x{size} {what} patches, "
                f"expected {expected}x{expected}: SiamRPN's geometry assumes a torchvision-style ResNet"
            )
        a, b = crop
        return features[..., a:b, a:b]

    def template_features(self, template: Tensor) -> Tensor:
        """``Tensor[B, 3, T, T]`` -> cropped, adjusted template features ``Tensor[B, channels, 7, 7]``."""
        return self._features(template, self.geometry.template_size, self.geometry.template_slice, "template")

    def search_features(self, search: Tensor) -> Tensor:
        """``Tensor[B, 3, N, N]`` -> cropped, adjusted search features ``Tensor[B, channels, s, s]``."""
        return self._features(search, self.geometry.search_size, self.geometry.search_slice, "search")

    def track(self, template_features: Tensor, search: Tensor) -> Tuple[Tensor, Tensor]:
        """Head outputs for search patches against precomputed template features (the tracker's step)."""
        return self.head(template_features, self.search_features(search))

    def forward(self, template: Tensor, search: Tensor) -> Tuple[Tensor, Tensor]:
        if template.shape[0] != search.shape[0]:
            raise ValueError(f"template batch {template.shape[0]} != search batch {search.shape[0]}")
        return self.track(self.template_features(template), search)
