"""Segmentation datamodules: batches ``(images Tensor[B, 3, H, W] float32, labels Tensor[B, H, W] int64)``
with 255 as the ignored label.

``voc`` reads the Pascal VOC (and SBD) layout and is the base of ``synthetic`` (generated data in that
layout); ``transforms`` holds the joint image/label augmentation.
"""

from dcn.datamodules.segmentation.synthetic import SyntheticSegDataModule
from dcn.datamodules.segmentation.voc import VOCSegDataModule

__all__ = ["SyntheticSegDataModule", "VOCSegDataModule"]
