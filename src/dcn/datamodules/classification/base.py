"""Loader plumbing shared by the image classification datamodules."""

from __future__ import annotations

from typing import List, Optional

import lightning as L
from torch.utils.data import DataLoader, Dataset

__all__ = ["ClassificationDataModule"]


class ClassificationDataModule(L.LightningDataModule):
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
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
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
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: the {split} split is not set up; call setup() first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

