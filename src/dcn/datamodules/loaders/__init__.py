"""DataLoader options and construction shared by every datamodule family."""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch.utils.data import DataLoader, Dataset

__all__ = ["LoaderOptions"]


class LoaderOptions:
    """Mixin of a LightningDataModule: the checked ``data.batch_size`` / ``val_batch_size`` /
    ``num_workers`` / ``pin_memory`` options and one way to build a split's DataLoader."""

    batch_size: int
    val_batch_size: int
    num_workers: int
    pin_memory: bool

    def set_loader_options(
        self,
        batch_size: int,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        min_batch_size: int = 1,
    ) -> None:
        """Check and keep the options (errors name the ``data.*`` key); ``val_batch_size`` None:
        ``batch_size``."""
        val_batch_size = batch_size if val_batch_size is None else val_batch_size
        for key, value, minimum in (
            ("batch_size", batch_size, min_batch_size),
            ("val_batch_size", val_batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"data.{key} must be an integer >= {minimum}, got {value!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def split_loader(
        self,
        dataset: Optional[Dataset],
        split: str,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        collate_fn: Optional[Callable[..., Any]] = None,
    ) -> DataLoader:
        """The DataLoader of ``split``; an error naming it when ``setup()`` has not built its dataset."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: the {split} split is not set up; call setup() first")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
        )
