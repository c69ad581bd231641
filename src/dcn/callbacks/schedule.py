"""When the picture callbacks draw, and what: the drawing epochs and the fixed validation items."""

from __future__ import annotations

import lightning as L

__all__ = ["first_validation_items", "is_drawing_epoch"]


def is_drawing_epoch(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether a picture callback draws at the end of this validation epoch: every
    ``every_n_epochs`` epochs and always after the last one; never during the sanity check or a
    ``fast_dev_run`` (a smoke test writes no pictures)."""
    if trainer.sanity_checking or trainer.fast_dev_run:
        return False
    epoch = trainer.current_epoch
    last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
    return (epoch + 1) % every_n_epochs == 0 or last


def first_validation_items(trainer: L.Trainer, count: int) -> list:
    """The first ``count`` items (or all, if fewer) of the (first) validation dataset: the same items
    every epoch and every run (dcn's validation sets are deterministic)."""
    loaders = trainer.val_dataloaders
    dataset = (loaders[0] if isinstance(loaders, (list, tuple)) else loaders).dataset
    return [dataset[i] for i in range(min(count, len(dataset)))]
