"""Classification datamodules: batches ``(images Tensor[B, C, H, W] float32, targets Tensor[B] int64)``.

``base.ClassificationDataModule`` holds what they share (``in_channels``, ``num_classes``,
``class_names``, loaders); one module per source: ``mnist``, ``mnist_scaled`` (the scaled-MNIST
test protocol), ``image_folder``, ``digits``; plus the random geometric deformation applied on the
fly (``deformation``, ``deformed_dataset``).
"""

from dcn.datamodules.classification.base import ClassificationDataModule
from dcn.datamodules.classification.deformation import GeometricDeformation
from dcn.datamodules.classification.deformed_dataset import DeformedImageDataset
from dcn.datamodules.classification.digits import DigitsDataModule
from dcn.datamodules.classification.image_folder import ImageFolderDataModule
from dcn.datamodules.classification.mnist import MNISTDataModule
from dcn.datamodules.classification.mnist_scaled import ScaledMNISTDataModule

__all__ = [
    "ClassificationDataModule",
    "DeformedImageDataset",
    "DigitsDataModule",
    "GeometricDeformation",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "ScaledMNISTDataModule",
]
