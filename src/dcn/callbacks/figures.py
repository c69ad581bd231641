"""Send a rendered figure where a run's pictures go: a PNG in the run directory and every active
logger that takes images (W&B: ``log_image``; TensorBoard: ``add_image``). Shared by the picture
callbacks (offset pictures, sample predictions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from dcn.viz import figure_to_array

__all__ = ["publish_figure"]


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
