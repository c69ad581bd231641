"""Validation pictures during training: every N epochs, the task's predictions on a few fixed
validation items, to ``<run dir>/val_images/epoch_<NNN>.png`` and every logger that takes images
(W&B, TensorBoard) under ``val/examples``.

What is drawn is the task's (:meth:`dcn.tasks.base.DcnTask.validation_picture`: predicted and true
class, mask or boxes); when and where is this callback's. Pictures are a side effect that a run can
switch off (``callbacks.validation_pictures=null``) without touching the model, which is why they are
a callback and not module code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from dcn.callbacks.schedule import first_validation_items, is_drawing_epoch
from dcn.figures import publish_figure

__all__ = ["ValidationPictures"]


class ValidationPictures(Callback):
    """Draw the task's predictions on the first validation items every ``every_n_epochs`` epochs
    (after validation; rank 0 only).

    Args:
        dirpath: where the PNGs go (the run's ``val_images/``).
        every_n_epochs: after the validation of every N-th epoch (and the last one).
        num_images: validation items per picture; None: the task's ``num_val_images`` (0: none).
        key: the name under which loggers receive the picture.
    """

    def __init__(
        self,
        dirpath: os.PathLike | str,
        every_n_epochs: int = 1,
        num_images: Optional[int] = None,
        key: str = "val/examples",
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if num_images is not None and num_images < 0:
            raise ValueError(f"num_images must be >= 0 or null (the task's num_val_images), got {num_images}")
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.key = key
        self.written: List[Path] = []
        self._items: Optional[List[Any]] = None

    def _count(self, pl_module: L.LightningModule) -> int:
        if self.num_images is not None:
            return self.num_images
        return int(getattr(pl_module, "hparams", {}).get("num_val_images", 0) or 0)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        count = self._count(pl_module)
        if (
            not count
            or not hasattr(pl_module, "validation_picture")
            or not is_drawing_epoch(trainer, self.every_n_epochs)
        ):
            return
        if self._items is None:
            self._items = first_validation_items(trainer, count)
        with torch.no_grad():
            picture = pl_module.validation_picture(self._items)
        if picture is None:
            return
        epoch = trainer.current_epoch
        path = publish_figure(
            trainer, picture, self.dirpath / f"epoch_{epoch:03d}.png", self.key, f"epoch {epoch}"
        )
        self.written.append(path)
