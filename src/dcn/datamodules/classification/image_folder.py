"""``image_folder``: a user's own dataset as ``train/``, ``val/`` and ``test/`` class folders."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from dcn.datamodules.classification.base import ClassificationDataModule
from dcn.images import IMAGENET_MEAN, IMAGENET_STD, read_image

__all__ = ["ImageFolderDataModule"]

_SPLITS = ("train", "val", "test")


class ImageFolderDataModule(ClassificationDataModule):
    """Images in ``<root>/<split>/<class name>/<image>``, read by ``torchvision.datasets.ImageFolder``.

    The class list is the sorted sub-folder names of ``train/``; ``val/`` and ``test/`` must hold the
    same class folders (otherwise their labels would silently mean other classes).

    Training images get ``RandomResizedCrop(image_size, scale=(0.5, 1))`` and a horizontal flip when
    ``train_augment`` (else the evaluation transform); evaluation images are resized so their
    shorter side is ``image_size`` and centre-cropped. Then ``Normalize(mean, std)``.

    Batches: ``(Tensor[B, C, S, S] float32, Tensor[B] int64)`` with ``S = image_size``, ``C = 1`` if
    ``grayscale`` else 3.

    Args:
        root: the dataset directory holding ``train/``, ``val/``, ``test/``.
        image_size: side of the square network input in pixels.
        grayscale: convert images to one channel.
        mean, std: per-channel normalisation; None uses ImageNet's statistics (their channel
            average when ``grayscale``), what torchvision's pretrained weights expect.
        train_augment: random crops and flips for training.
        batch_size, num_workers, pin_memory: see :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        root: Union[str, Path],
        image_size: int = 224,
        grayscale: bool = False,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        train_augment: bool = True,
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if image_size < 1:
            raise ValueError(f"data.image_size must be >= 1 pixel, got {image_size}")
        channels = 1 if grayscale else 3
        if mean is None:
            mean = (sum(IMAGENET_MEAN) / 3,) if grayscale else IMAGENET_MEAN
        if std is None:
            std = (sum(IMAGENET_STD) / 3,) if grayscale else IMAGENET_STD
        for key, values in (("mean", mean), ("std", std)):
            if len(values) != channels:
                raise ValueError(
                    f"data.{key} needs {channels} value(s) for {'grayscale' if grayscale else 'RGB'} "
                    f"images, got {list(values)}"
                )
        if any(s <= 0 for s in std):
            raise ValueError(f"data.std values must be > 0, got {list(std)}")
        self.root = Path(root)
        self.image_size = image_size
        self.grayscale = grayscale
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train_augment = train_augment
        self._class_names: Optional[List[str]] = None

    @property
    def in_channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def class_names(self) -> List[str]:
        if self._class_names is None:
            self._class_names = self._find_classes("train")
        return self._class_names

    def split_dir(self, split: str) -> Path:
        path = self.root / split
        if not path.is_dir():
            raise FileNotFoundError(
                f"image_folder: split directory {path} does not exist. data.root={str(self.root)!r} must "
                f"hold {', '.join(s + '/' for s in _SPLITS)} each with one sub-folder of images per class."
            )
        return path

    def _find_classes(self, split: str) -> List[str]:
        classes = sorted(p.name for p in self.split_dir(split).iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"image_folder: {self.root / split} has no class sub-folders")
        return classes

    def transform(self, train: bool) -> v2.Compose:
        """The image transform of the training (``train=True``) or evaluation splits."""
        if train and self.train_augment:
            geometry = [
                v2.RandomResizedCrop(self.image_size, scale=(0.5, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        else:
            geometry = [v2.Resize(self.image_size, antialias=True), v2.CenterCrop(self.image_size)]
        colour = [v2.Grayscale(num_output_channels=1)] if self.grayscale else []
        return v2.Compose(
            [
                v2.ToImage(),
                *colour,
                *geometry,
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(self.mean), std=list(self.std)),
            ]
        )

    def setup(self, stage: Optional[str] = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, _SPLITS)
        for split in needed:
            if getattr(self, f"{split}_set") is not None:
                continue
            classes = self._find_classes(split)
            if classes != self.class_names:
                raise ValueError(
                    f"image_folder: {self.root / split} has classes {classes} but train/ has "
                    f"{self.class_names}; every split needs the same class folders"
                )
            for name in classes:
                folder = self.split_dir(split) / name
                if not any(p.is_file() and p.suffix.lower() in IMG_EXTENSIONS for p in folder.iterdir()):
                    raise FileNotFoundError(
                        f"image_folder: the {split} split's class folder {folder} holds no images "
                        f"({', '.join(IMG_EXTENSIONS)}); every class needs images in every split"
                    )
            # dcn's reader: a truncated or unreadable image fails with its file name.
            dataset = ImageFolder(
                str(self.split_dir(split)), transform=self.transform(split == "train"), loader=read_image
            )
            setattr(self, f"{split}_set", dataset)
