"""Offset pictures during training: every N epochs, the deformable sampling locations for a few fixed
validation images, written to ``<run dir>/offsets/epoch_<NNN>.png`` and sent to every logger that
takes images (W&B: ``wandb.Image`` under ``val/offsets``; TensorBoard: ``add_image``).
The pictures are those of ``python -m dcn.viz`` (see :mod:`dcn.sampling_points`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from dcn.callbacks.schedule import first_validation_items, is_drawing_epoch
from dcn.figures import publish_figure
from dcn.ops import DeformConv2dPack
from dcn.sampling_points import render_figure, sampling_points

__all__ = ["OffsetVisualization"]


class OffsetVisualization(Callback):
    """Draw the deformable sampling locations of ``num_images`` validation images every
    ``every_n_epochs`` epochs (after validation; rank 0 only).

    Args:
        dirpath: where the PNGs go (the run's ``offsets/``).
        every_n_epochs: draw after the validation of every N-th epoch (and the last one).
        num_images: the first ``num_images`` samples of the validation set (fixed across epochs and
            runs: dcn's validation sets are deterministic).
        point: (y, x) in image pixels of the output unit to follow; None: the centre.
        key: the name under which loggers receive the picture.
    """

    def __init__(
        self,
        dirpath: os.PathLike | str,
        every_n_epochs: int = 1,
        num_images: int = 4,
        point: Optional[Sequence[float]] = None,
        key: str = "val/offsets",
    ) -> None:
        super().__init__()
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(
                f"every_n_epochs and num_images must be >= 1, got {every_n_epochs} and {num_images}"
            )
        if point is not None and len(point) != 2:
            raise ValueError(f"point must be [y, x] in image pixels or null, got {point!r}")
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.point: Optional[Tuple[float, float]] = (
            None if point is None else (float(point[0]), float(point[1]))
        )
        self.key = key
        self.written: List[Path] = []
        self._images: Optional[List[torch.Tensor]] = None

    def _validation_images(self, trainer: L.Trainer) -> List[torch.Tensor]:
        if self._images is None:
            self._images = [item[0] for item in first_validation_items(trainer, self.num_images)]
        return self._images

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_drawing_epoch(trainer, self.every_n_epochs):
            return
        epoch = trainer.current_epoch
        backbone = getattr(pl_module, "backbone", pl_module)
        if not any(isinstance(m, DeformConv2dPack) for m in backbone.modules()):
            if not getattr(self, "_warned", False):
                rank_zero_warn("OffsetVisualization: the network has no deformable layer; no offset pictures")
                self._warned = True
            return
        images = self._validation_images(trainer)
        device = next(backbone.parameters()).device
        results = [sampling_points(backbone, image.to(device), self.point) for image in images]
        titles = [f"val[{i}]: {len(r.points)} points" for i, r in enumerate(results)]
        fig = render_figure([image.cpu() for image in images], results, titles)
        fig.suptitle(f"epoch {epoch}, step {trainer.global_step}", fontsize=9)
        path = publish_figure(
            trainer, fig, self.dirpath / f"epoch_{epoch:03d}.png", self.key, f"epoch {epoch}"
        )
        self.written.append(path)
