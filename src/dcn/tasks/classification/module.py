"""Image classification as a LightningModule: backbone -> deepest feature -> GAP + Linear -> cross-entropy."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from dcn.tasks.classification.head import ClassificationHead
from dcn.tasks.optimization import check_interval, optimizer_config

__all__ = ["ClassificationTask"]

_TOP5_MIN_CLASSES = 10  # top-5 accuracy is only informative with enough classes


class ClassificationTask(L.LightningModule):
    """Train and evaluate an image classifier on ``(images, targets)`` batches.

    Batches: ``images`` Tensor[B, C, H, W] float, ``targets`` Tensor[B] int64 in ``[0, num_classes)``.
    ``forward(images)`` returns logits Tensor[B, num_classes].

    Logged per epoch: ``{train,val,test}/loss`` (cross-entropy with
    label smoothing as configured), ``{train,val,test}/acc`` (top-1, micro-averaged: the fraction of
    correct samples) and, with at least 10 classes, ``{val,test}/acc_top5``; per step:
    ``train/loss_step``.

    Args:
        backbone: a dcn backbone: ``forward`` returns an ordered dict of features (the last is pooled),
            ``out_channels`` is that feature's channel count.
        num_classes: number of classes (``train.py`` takes it from the datamodule).
        optimizer: ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_`` optimizer).
        scheduler: optional ``optimizer -> LRScheduler`` (a Hydra ``_partial_`` scheduler); stepped
            every ``scheduler_interval`` ("epoch" or "step").
        label_smoothing: cross-entropy label smoothing in [0, 1).
        monitor: the validation metric that selects the best checkpoint and drives
            ``ReduceLROnPlateau``-style schedulers; ``monitor_mode`` is "max" or "min".
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Optional[Callable[..., Any]] = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        monitor: str = "val/acc",
        monitor_mode: str = "max",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"task.label_smoothing must be in [0, 1), got {label_smoothing}")
        check_interval(scheduler_interval)
        if monitor_mode not in ("max", "min"):
            raise ValueError(f"task.monitor_mode must be 'max' or 'min', got {monitor_mode!r}")
        if not hasattr(backbone, "out_channels"):
            raise TypeError(
                f"backbone must expose out_channels (a dcn backbone), got {type(backbone).__name__}"
            )
        # Only plain values go into the checkpoint's hparams: the backbone is in the state_dict, and
        # Hydra's partial factories would make checkpoints unloadable with torch.load(weights_only=True).
        # The run's full config is in the run directory (.hydra/, results.json).
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"], logger=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, num_classes)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

        self.train_metrics = _accuracy_metrics(num_classes, top5=False, prefix="train/")
        top5 = num_classes >= _TOP5_MIN_CLASSES
        self.val_metrics = _accuracy_metrics(num_classes, top5=top5, prefix="val/")
        self.test_metrics = _accuracy_metrics(num_classes, top5=top5, prefix="test/")

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        return self.head(next(reversed(features.values())))

    def _step(self, batch: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        images, targets = batch
        if images.dim() != 4 or targets.dim() != 1 or targets.shape[0] != images.shape[0]:
            raise ValueError(
                "classification batches must be (images Tensor[B, C, H, W], targets Tensor[B]); got "
                f"images {tuple(images.shape)} and targets {tuple(targets.shape)}"
            )
        logits = self(images)
        return self.criterion(logits, targets), logits, targets

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, targets = self._step(batch)
        self.train_metrics.update(logits.detach(), targets)
        # Explicit names: logging one key per step and per epoch would make Lightning rename it
        # to train/loss_step + train/loss_epoch, and train/loss must mean the same in every task.
        self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits, targets = self._step(batch)
        self.val_metrics.update(logits, targets)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits, targets = self._step(batch)
        self.test_metrics.update(logits, targets)
        self.log("test/loss", loss, on_step=False, on_epoch=True)
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> Dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        return optimizer_config(optimizer, self.scheduler_factory, self.hparams.scheduler_interval, self,
                                self.hparams.monitor)  # fmt: skip


def _accuracy_metrics(num_classes: int, top5: bool, prefix: str) -> MetricCollection:
    """Fresh metric objects: ``acc`` (top-1) and optionally ``acc_top5``, micro-averaged."""
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if top5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)
