"""Detection datamodules: batches ``(list of images Tensor[3, H, W], list of targets)`` with torchvision's
detection target dicts (``boxes`` xyxy float, ``labels`` int64 from 1, ...).

``base`` holds the shared sample helpers and loaders (:class:`DetectionLoaders`); one module per
format: ``voc`` (Pascal VOC XML), ``coco`` (COCO JSON), ``synthetic`` (generated VOC-layout data).
"""

from dcn.datamodules.detection.base import DetectionLoaders
from dcn.datamodules.detection.coco import CocoDetDataModule
from dcn.datamodules.detection.synthetic import SyntheticDetDataModule, SyntheticDetGenerator
from dcn.datamodules.detection.voc import VOCDetDataModule

__all__ = [
    "CocoDetDataModule",
    "DetectionLoaders",
    "SyntheticDetDataModule",
    "SyntheticDetGenerator",
    "VOCDetDataModule",
]
