"""Sample predictions during training: every N epochs, a few fixed validation images with the
predicted and the true class, to ``<run dir>/predictions/epoch_<NNN>.png`` and every image-capable
logger (W&B ``val/predictions``, TensorBoard). For classifiers: modules whose forward returns logits
Tensor[B, num_classes]; other outputs are skipped with one warning."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Optional, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from dcn.callbacks.figures import first_validation_items, is_drawing_epoch, publish_figure

__all__ = ["SamplePredictions"]


class SamplePredictions(Callback):
    """Draw ``num_images`` validation samples with their predicted / true class every
    ``every_n_epochs`` epochs (rank 0; correct predictions titled in green, wrong ones in red).

    Args:
        dirpath: where the PNGs go (the run's ``predictions/``).
        every_n_epochs: after the validation of every N-th epoch (and the last one).
        num_images: the first ``num_images`` validation samples (fixed across epochs).
        key: the name under which loggers receive the picture.
    """

    def __init__(self, dirpath: os.PathLike | str, every_n_epochs: int = 1, num_images: int = 16,
                 key: str = "val/predictions") -> None:
        super().__init__()
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"every_n_epochs and num_images must be >= 1, got {every_n_epochs} and {num_images}")
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.key = key
        self.written: List[Path] = []
        self._samples: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._warned = False

    def _validation_samples(self, trainer: L.Trainer) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._samples is None:
            items = first_validation_items(trainer, self.num_images)
            self._samples = (torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items]))
        return self._samples

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_drawing_epoch(trainer, self.every_n_epochs):
            return
        epoch = trainer.current_epoch
        images, targets = self._validation_samples(trainer)
        with torch.no_grad():
            logits = pl_module(images.to(pl_module.device))
        if not torch.is_tensor(logits) or logits.dim() != 2 or targets.dim() != 1:
            if not self._warned:
                rank_zero_warn("SamplePredictions draws classifiers only (logits Tensor[B, C]); skipped")
                self._warned = True
            return
        predicted = logits.argmax(1).cpu()
        fig = _grid(images.cpu(), predicted, targets)
        fig.suptitle(f"epoch {epoch}, step {trainer.global_step}: predicted / true", fontsize=9)
        path = publish_figure(trainer, fig, self.dirpath / f"epoch_{epoch:03d}.png", self.key, f"epoch {epoch}")
        self.written.append(path)


def _grid(images: torch.Tensor, predicted: torch.Tensor, targets: torch.Tensor):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, p, t in zip(axes.flat, images, predicted.tolist(), targets.tolist()):
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8)
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray", interpolation="nearest")
        else:
            ax.imshow(image[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"{p} / {t}", fontsize=8, color="green" if p == t else "red")
    fig.tight_layout()
    return fig
