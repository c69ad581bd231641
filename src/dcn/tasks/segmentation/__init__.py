"""Semantic segmentation: DeepLabV3 / DeepLabV3+ over a dcn backbone, pixel cross-entropy (255 ignored),
confusion-matrix metrics (mIoU, pixel and mean class accuracy) and the LightningModule that ties them."""

from dcn.backbones.frozen_bn import freeze_batch_norm
from dcn.tasks.segmentation.deeplab import HEADS, DeepLab, DeepLabV3Head, DeepLabV3PlusHead, aspp_rates_for
from dcn.tasks.segmentation.loss import segmentation_cross_entropy
from dcn.tasks.segmentation.metrics import SegmentationMetrics, scores_from_confusion
from dcn.tasks.segmentation.module import SegmentationTask

__all__ = [
    "HEADS",
    "DeepLab",
    "DeepLabV3Head",
    "DeepLabV3PlusHead",
    "SegmentationMetrics",
    "SegmentationTask",
    "aspp_rates_for",
    "freeze_batch_norm",
    "scores_from_confusion",
    "segmentation_cross_entropy",
]
