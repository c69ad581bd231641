"""Loader plumbing shared by the image classification datamodules."""

from __future__ import annotations

from typing import List, Optional, Tuple

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dcn.datamodules.classification.deformation import GeometricDeformation
from dcn.datamodules.classification.deformed_dataset import DeformedImageDataset
from dcn.datamodules.loaders import LoaderOptions

__all__ = ["ClassificationDataModule", "DeformedDigits", "DigitClasses"]


class ClassificationDataModule(LoaderOptions, L.LightningDataModule):
    """Base for datamodules whose batches are ``(images, targets)``.

    ``images`` is Tensor[B, C, H, W] float32 with ``C == in_channels``; ``targets`` is Tensor[B] int64
    class indices in ``[0, num_classes)``; ``class_names[k]`` names class ``k``. Subclasses fill
    ``train_set``/``val_set``/``test_set`` in :meth:`setup` and define the three properties.

    Args:
        batch_size: samples per batch (per device under DDP).
        num_workers: DataLoader worker processes (0 loads in the main process).
        pin_memory: pin host memory for faster host-to-GPU copies.
    """

    def __init__(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        self.set_loader_options(batch_size, num_workers=num_workers, pin_memory=pin_memory)
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    @property
    def in_channels(self) -> int:
        """Channels of the images in a batch (the backbone's ``in_channels``)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of classes (the task head's output size)."""
        return len(self.class_names)

    @property
    def class_names(self) -> List[str]:
        """Name of each class, indexed by target."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)

    def _loader(self, dataset: Optional[Dataset], split: str, shuffle: bool) -> DataLoader:
        return self.split_loader(dataset, split, self.batch_size, shuffle)


class DigitClasses:
    """Mixin for the handwritten-digit datamodules: one grey channel, classes ``"0"`` to ``"9"``."""

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def class_names(self) -> List[str]:
        return [str(d) for d in range(10)]


class DeformedDigits(DigitClasses):
    """Mixin for the digit datamodules under random geometric deformation (``digits``, ``mnist``).

    Training samples are deformed afresh on every read, so each epoch sees new deformations;
    validation and test samples get a deformation fixed by ``(eval_seed, index)`` (``eval_seed + 1``
    for test), or none with ``deform_eval=False``, so their metrics compare across runs and training
    seeds. ``split_seed`` fixes the train / validation / test split.
    """

    def set_deformation(
        self, deformation: Optional[GeometricDeformation], deform_eval: bool, split_seed: int, eval_seed: int
    ) -> None:
        self.deformation, self.deform_eval = deformation, deform_eval
        self.split_seed, self.eval_seed = split_seed, eval_seed

    def set_deformed_splits(
        self, train: Tuple[Tensor, Tensor], val: Tuple[Tensor, Tensor], test: Tuple[Tensor, Tensor]
    ) -> None:
        """``train_set``, ``val_set``, ``test_set`` from ``(images, targets)`` pairs, deformed as above."""
        eval_deformation = self.deformation if self.deform_eval else None
        self.train_set = DeformedImageDataset(*train, self.deformation)
        self.val_set = DeformedImageDataset(*val, eval_deformation, fixed_seed=self.eval_seed)
        self.test_set = DeformedImageDataset(*test, eval_deformation, fixed_seed=self.eval_seed + 1)
