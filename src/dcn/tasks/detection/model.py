"""Faster R-CNN over a dcn backbone: torchvision's detection framework with a deformable switch in two places.

The framework (image transform, RPN, RoI heads, losses, post-processing) is torchvision's
``FasterRCNN``, unchanged. dcn supplies the feature extractor and, optionally, the box pooler:

- ``layout="fpn"`` (default): the backbone's ``layer1..layer4`` (strides 4..32) feed torchvision's
  ``FeaturePyramidNetwork`` (256 channels, plus a max-pooled level for the RPN). RPN on all five
  levels, one anchor size per level; boxes are pooled 7x7 from ``P2..P5`` by FPN's level rule.
- ``layout="c4"``: the DCN paper's arrangement (Dai et al. 2017, Sec. 4; their official code):
  the RPN runs on conv4 (``layer3``, stride 16) alone; conv5 (``layer4``) keeps stride 16 through
  dilation (the backbone must be built with ``output_stride=16``), is reduced to 256 channels by a
  1x1 conv, and boxes are pooled 7x7 from it. Paper-style deformable conv in conv5 thus sees the
  RoIs at stride 16.

Either way the box head is two FC layers (``representation_size``, 1024 in the paper) and
torchvision's ``FastRCNNPredictor``.

``roi_pool="align"`` keeps torchvision's ``MultiScaleRoIAlign``; ``roi_pool="deform"`` swaps in
:class:`dcn.ops.MultiScaleDeformRoIPool` after construction (torchvision type-checks the
constructor argument). Its offset head is zero-initialised, so at init the two give the same
detections.

Tensor forms are torchvision's: ``forward(images: List[Tensor[3, H_i, W_i]] in [0, 1], targets:
List[{"boxes": Tensor[K, 4] xyxy, "labels": Tensor[K] int64}])`` returns the loss dict in training
mode and ``List[{"boxes", "labels", "scores"}]`` in eval mode, boxes in input-image pixels.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from dcn.backbones.features import Backbone
from dcn.backbones.frozen_bn import freeze_batch_norm
from dcn.images import IMAGENET_MEAN, IMAGENET_STD
from dcn.ops import MultiScaleDeformRoIPool

__all__ = [
    "LAYOUTS",
    "ROI_POOLS",
    "C4Features",
    "FPNFeatures",
    "FeatureSelectingRPN",
    "build_faster_rcnn",
    "freeze_stages",
]

LAYOUTS = ("fpn", "c4")
ROI_POOLS = ("align", "deform")

# FasterRCNN keyword arguments settable from ``task.rpn.<key>`` (-> ``rpn_<key>``) and
# ``task.roi_heads.<key>`` (-> ``box_<key>``).
RPN_KEYS = (
    "pre_nms_top_n_train",
    "pre_nms_top_n_test",
    "post_nms_top_n_train",
    "post_nms_top_n_test",
    "nms_thresh",
    "fg_iou_thresh",
    "bg_iou_thresh",
    "batch_size_per_image",
    "positive_fraction",
    "score_thresh",
)
ROI_HEAD_KEYS = (
    "score_thresh",
    "nms_thresh",
    "detections_per_img",
    "fg_iou_thresh",
    "bg_iou_thresh",
    "batch_size_per_image",
    "positive_fraction",
)


def _feature_channels(backbone: Backbone, names: Sequence[str], key: str) -> List[int]:
    info = {f.name: f for f in backbone.feature_info}
    missing = [n for n in names if n not in info]
    if missing:
        raise ValueError(f"{key}: {type(backbone).__name__} has no feature {missing}; it has {list(info)}")
    return [info[n].channels for n in names]


class FPNFeatures(nn.Module):
    """``x (Tensor[N, 3, H, W]) -> OrderedDict "0".."L-1", "pool"`` of Tensor[N, 256, ...]: the chosen
    backbone features (shallow to deep) through a feature pyramid (top-down + lateral 1x1 convs,
    3x3 output convs) plus a stride-2 max-pool of the deepest level (anchors only, not pooled)."""

    def __init__(self, backbone: Backbone, in_features: Sequence[str], out_channels: int = 256) -> None:
        super().__init__()
        in_features = list(in_features)
        if not in_features:
            raise ValueError("task.fpn_features must name at least one backbone feature")
        channels = _feature_channels(backbone, in_features, "task.fpn_features")
        self.body = backbone
        self.in_features = in_features
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    @property
    def pooled_names(self) -> List[str]:
        """The pyramid levels the box pooler reads (all but the extra max-pooled one)."""
        return [str(i) for i in range(len(self.in_features))]

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), features[name]) for i, name in enumerate(self.in_features)))


class C4Features(nn.Module):
    """The DCN paper's single-scale layout: ``x -> {"c4": Tensor[N, C4, H/16, W/16] (RPN input),
    "c5": Tensor[N, 256, H/16, W/16] (pooled)}``, where ``c5`` is the stride-16 (dilated) last stage
    reduced by a 1x1 conv + ReLU."""

    def __init__(
        self,
        backbone: Backbone,
        rpn_feature: str = "layer3",
        roi_feature: str = "layer4",
        out_channels: int = 256,
    ) -> None:
        super().__init__()
        info = {f.name: f for f in backbone.feature_info}
        self.rpn_channels, roi_channels = _feature_channels(
            backbone, [rpn_feature, roi_feature], "task.c4_features"
        )
        if info[rpn_feature].stride != info[roi_feature].stride:
            raise ValueError(
                f"layout c4 pools {roi_feature!r} at the RPN's stride, but {roi_feature!r} has stride "
                f"{info[roi_feature].stride} and {rpn_feature!r} {info[rpn_feature].stride}; build the "
                f"backbone with backbone.output_stride={info[rpn_feature].stride} (the paper's dilated conv5)"
            )
        self.body = backbone
        self.rpn_feature, self.roi_feature = rpn_feature, roi_feature
        self.reduce = nn.Sequential(nn.Conv2d(roi_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.out_channels = out_channels
        self.pooled_names = ["c5"]

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        features = self.body(x)
        return OrderedDict(c4=features[self.rpn_feature], c5=self.reduce(features[self.roi_feature]))


class FeatureSelectingRPN(RegionProposalNetwork):
    """torchvision's RPN run on a subset of the feature maps (``c4`` in the c4 layout); same
    parameters and state-dict keys as the RPN it is built from."""

    def __init__(self, rpn: RegionProposalNetwork, feature_names: Sequence[str]) -> None:
        super().__init__(
            rpn.anchor_generator,
            rpn.head,
            0.5,
            0.5,
            1,
            0.5,
            dict(rpn._pre_nms_top_n),
            dict(rpn._post_nms_top_n),
            rpn.nms_thresh,
            score_thresh=rpn.score_thresh,
        )
        # The matcher and sampler carry the IoU thresholds and sampling settings: take them as built.
        self.proposal_matcher = rpn.proposal_matcher
        self.fg_bg_sampler = rpn.fg_bg_sampler
        self.box_coder = rpn.box_coder
        self.min_size = rpn.min_size
        self.feature_names = list(feature_names)

    def forward(self, images, features: Dict[str, Tensor], targets=None):  # type: ignore[override]
        return super().forward(images, OrderedDict((k, features[k]) for k in self.feature_names), targets)


def freeze_stages(backbone: nn.Module, frozen_stages: int) -> List[str]:
    """Stop gradients into the stem and the first ``frozen_stages`` stages (mmdetection's convention:
    -1 none, 0 the stem, 1 the stem and ``layer1``, ...). Pretrained low-level filters are kept
    as they are, which also saves their backward. Returns the frozen module names."""
    if frozen_stages < 0:
        return []
    names = [n for n in ("conv1", "bn1") if hasattr(backbone, n)]
    names += [f"layer{i}" for i in range(1, frozen_stages + 1)]
    for name in names:
        module = getattr(backbone, name, None)
        if module is None:
            raise ValueError(f"task.frozen_stages={frozen_stages}: {type(backbone).__name__} has no {name!r}")
        for p in module.parameters():
            p.requires_grad_(False)
    return names


def _checked(
    settings: Optional[Mapping[str, Any]], allowed: Sequence[str], key: str, prefix: str
) -> Dict[str, Any]:
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {key} setting(s) {unknown}; allowed: {list(allowed)}")
    return {f"{prefix}{k}": v for k, v in settings.items()}


def build_faster_rcnn(
    backbone: Backbone,
    num_classes: int,
    layout: str = "fpn",
    roi_pool: str = "align",
    *,
    fpn_features: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),
    fpn_channels: int = 256,
    c4_features: Tuple[str, str] = ("layer3", "layer4"),
    anchor_sizes: Optional[Sequence[Sequence[int]]] = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    min_size: int = 600,
    max_size: int = 1000,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    representation_size: int = 1024,
    pool_size: int = 7,
    sampling_ratio: int = 2,
    deform_roi_pool: Optional[Mapping[str, Any]] = None,
    rpn: Optional[Mapping[str, Any]] = None,
    roi_heads: Optional[Mapping[str, Any]] = None,
    freeze_bn: bool = False,
    frozen_stages: int = -1,
) -> FasterRCNN:
    """torchvision's ``FasterRCNN`` over ``backbone`` (see the module docstring).

    Args:
        backbone: a dcn backbone with the features named in ``fpn_features`` / ``c4_features``.
        num_classes: classes including background (index 0).
        layout: ``"fpn"`` or ``"c4"``.
        fpn_features, fpn_channels: the backbone features the pyramid is built on, and its width.
        c4_features: the c4 layout's RPN feature and pooled feature.
        roi_pool: ``"align"`` (RoIAlign) or ``"deform"`` (deformable RoI pooling).
        anchor_sizes: one tuple of sizes (pixels of the resized image) per RPN level; None: FPN's
            ``(32,), (64,), (128,), (256,), (512,)``, c4's ``(64, 128, 256, 512)`` on one level.
        aspect_ratios: anchor height/width ratios, the same at every level.
        min_size, max_size: images are resized so the short side is ``min_size`` unless the long
            side would exceed ``max_size`` (600/1000 for VOC, as in the paper).
        representation_size: width of the two FC layers of the box head.
        pool_size, sampling_ratio: the box pooler's output size and RoIAlign sampling ratio.
        deform_roi_pool: extra :class:`MultiScaleDeformRoIPool` arguments (``gamma``, ``modulated``,
            ``hidden_channels``, ``offset_heads``) for ``roi_pool="deform"``.
        rpn, roi_heads: FasterRCNN's ``rpn_*`` / ``box_*`` settings without the prefix.
        freeze_bn: replace the backbone's BatchNorm layers by frozen ones (small detection batches).
        frozen_stages: see :func:`freeze_stages`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"task.layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if roi_pool not in ROI_POOLS:
        raise ValueError(f"task.roi_pool must be one of {list(ROI_POOLS)}, got {roi_pool!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too and must be >= 2, got {num_classes}")
    if min_size < 1 or max_size < min_size:
        raise ValueError(
            "task.min_size / task.max_size must satisfy 1 <= min_size <= max_size, "
            f"got {min_size} / {max_size}"
        )
    if freeze_bn:
        backbone = freeze_batch_norm(backbone)
    freeze_stages(backbone, frozen_stages)

    if layout == "fpn":
        features: nn.Module = FPNFeatures(backbone, fpn_features, fpn_channels)
        levels = len(fpn_features) + 1  # + the max-pooled level
        default_sizes = tuple((32 * 2**i,) for i in range(levels))
        rpn_channels = features.out_channels
    else:
        features = C4Features(backbone, *c4_features)
        levels = 1
        default_sizes = ((64, 128, 256, 512),)
        rpn_channels = features.rpn_channels
    sizes = tuple(tuple(int(s) for s in level) for level in (anchor_sizes or default_sizes))
    if len(sizes) != levels:
        raise ValueError(
            f"task.anchor_sizes lists {len(sizes)} levels but layout {layout!r} has {levels} RPN level(s); "
            f"e.g. {[list(s) for s in default_sizes]}"
        )
    ratios = (tuple(float(r) for r in aspect_ratios),) * levels
    anchors = AnchorGenerator(sizes, ratios)
    if len(set(anchors.num_anchors_per_location())) != 1:
        raise ValueError(f"task.anchor_sizes must list the same number of sizes at every level, got {sizes}")

    pooled = features.pooled_names
    channels = features.out_channels
    model = FasterRCNN(
        features,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(rpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(pooled, pool_size, sampling_ratio),
        box_head=TwoMLPHead(channels * pool_size**2, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        **_checked(rpn, RPN_KEYS, "task.rpn", "rpn_"),
        **_checked(roi_heads, ROI_HEAD_KEYS, "task.roi_heads", "box_"),
    )
    if layout == "c4":
        model.rpn = FeatureSelectingRPN(model.rpn, ["c4"])
    if roi_pool == "deform":
        options = dict(deform_roi_pool or {})
        allowed = ("gamma", "modulated", "hidden_channels", "offset_heads")
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown task.deform_roi_pool setting(s) {unknown}; allowed: {', '.join(allowed)}"
            )
        model.roi_heads.box_roi_pool = MultiScaleDeformRoIPool(
            pooled, pool_size, sampling_ratio, in_channels=channels, **options
        )
    return model
