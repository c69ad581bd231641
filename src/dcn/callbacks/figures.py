"""Send a rendered figure where a run's pictures go: a PNG in the run directory and every active
logger that takes images (W&B: ``log_image``; TensorBoard: ``add_image``). Shared by the picture
callbacks (offset pictures, sample predictions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from dcn.viz import figure_to_array

__all__ = ["first_validation_items", "is_drawing_epoch", "publish_figure"]


def is_drawing_epoch(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether a picture callback draws at the end of this validation epoch: every
    ``every_n_epochs`` epochs and always after the last one, never during the sanity check."""
    if trainer.sanity_checking:
        return False
    epoch = trainer.current_epoch
    last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
    return (epoch + 1) % every_n_epochs == 0 or last


def first_validation_items(trainer: L.Trainer, count: int) -> list:
    """The first ``count`` items (or all, if fewer) of the (first) validation dataset."""
    loaders = trainer.val_dataloaders
    dataset = (loaders[0] if isinstance(loaders, (list, tuple)) else loaders).dataset
    return [dataset[i] for i in range(min(count, len(dataset)))]


def publish_figure(trainer: L.Trainer, fig: Any, path: Path, key: str, caption: str) -> Path:
    """Save ``fig`` (a matplotlib figure, closed afterwards) to ``path`` and log it under ``key``
    at the trainer's global step. Returns ``path``."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pixels = figure_to_array(fig)
    plt.close(fig)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[pixels], step=trainer.global_step, caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, pixels, global_step=trainer.global_step, dataformats="HWC")
    return path
