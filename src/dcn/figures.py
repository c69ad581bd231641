"""Figures on the ground floor: render a matplotlib figure to pixels and send a picture where a run's
pictures go (a PNG in the run directory and every logger that takes images: W&B ``log_image``,
TensorBoard ``add_image``). Used by the picture callbacks and the command-line tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = ["figure_to_array", "new_figure", "publish_figure", "save_picture"]

Picture = Union[Any, np.ndarray]  # a matplotlib figure, or uint8 pixels (H, W, 3)


def new_figure(*args: Any, **kwargs: Any):
    """``matplotlib.pyplot.subplots(*args, **kwargs)`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def figure_to_array(fig: Any) -> np.ndarray:
    """RGB uint8 array [H, W, 3] of a rendered matplotlib figure (for TensorBoard / W&B)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_picture(picture: Picture, path: Path) -> np.ndarray:
    """Write ``picture`` (a figure, closed afterwards, or uint8 pixels (H, W, 3)) as a PNG at ``path``
    (folders created); returns its pixels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(picture, np.ndarray):
        from PIL import Image

        Image.fromarray(picture).save(path)
        return picture
    import matplotlib.pyplot as plt

    picture.savefig(path, dpi=110)
    pixels = figure_to_array(picture)
    plt.close(picture)
    return pixels


def publish_figure(trainer: Any, picture: Picture, path: Path, key: str, caption: str) -> Path:
    """Save ``picture`` to ``path`` and log it under ``key`` at the trainer's global step to every
    logger that takes images. Returns ``path``."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    pixels = save_picture(picture, path)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[pixels], step=trainer.global_step, caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, pixels, global_step=trainer.global_step, dataformats="HWC")
    return Path(path)
