"""Lightning datamodules, one module per dataset family.

Every classification datamodule yields ``(images Tensor[B, C, H, W] float32, targets Tensor[B] int64)``
and exposes ``in_channels``, ``num_classes`` and ``class_names``; ``train.py`` hands the first to the
backbone and the second to the task, so neither is written twice in the configs.
"""

from dcn.datamodules.classification_datamodule import ClassificationDataModule
from dcn.datamodules.deformation import GeometricDeformation
from dcn.datamodules.deformed_dataset import DeformedImageDataset
from dcn.datamodules.digits import DigitsDataModule
from dcn.datamodules.image_folder import ImageFolderDataModule
from dcn.datamodules.mnist import MNISTDataModule

__all__ = [
    "ClassificationDataModule",
    "DeformedImageDataset",
    "DigitsDataModule",
    "GeometricDeformation",
    "ImageFolderDataModule",
    "MNISTDataModule",
]
