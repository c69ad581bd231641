"""Image classification as a LightningModule: backbone -> deepest feature -> GAP + Linear -> cross-entropy."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from dcn.tasks.base import DcnTask
from dcn.tasks.classification.head import ClassificationHead
from dcn.tasks.classification.visualization import prediction_grid

__all__ = ["ClassificationTask"]

_TOP5_MIN_CLASSES = 10  # top-5 accuracy is only informative with enough classes


class ClassificationTask(DcnTask):
    """Train and evaluate an image classifier on ``(images, targets)`` batches.

    Batches: ``images`` Tensor[B, C, H, W] float, ``targets`` Tensor[B] int64 in ``[0, num_classes)``.
    ``forward(images)`` returns logits Tensor[B, num_classes].

    Logged per epoch: ``{train,val,test}/loss`` (cross-entropy with
    label smoothing as configured), ``{train,val,test}/acc`` (top-1, micro-averaged: the fraction of
    correct samples) and, with at least 10 classes, ``{val,test}/acc_top5``; per step:
    ``train/loss_step``. Validation pictures: the first ``num_val_images`` validation images with
    their predicted / true class.

    Several test sets (a datamodule whose ``test_dataloader`` returns a list, e.g. one per digit scale
    in ``mnist_scaled``): each set ``k`` logs ``test/acc_<name_k>`` (top-1), with names from the
    datamodule's ``test_set_names`` (else ``set0``, ``set1``, ...); ``test/loss``, ``test/acc`` and
    ``test/acc_top5`` pool every sample of every set (for sets of equal size: the mean over sets).

    Args:
        backbone: a dcn backbone: ``forward`` returns an ordered dict of features (the last is pooled),
            ``out_channels`` is that feature's channel count.
        num_classes: number of classes (``train.py`` takes it from the datamodule).
        optimizer, scheduler, scheduler_interval, monitor, monitor_mode, class_names,
            num_val_images: see :class:`~dcn.tasks.base.DcnTask`.
        label_smoothing: cross-entropy label smoothing in [0, 1).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Optional[Callable[..., Any]] = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        class_names: Optional[Sequence[str]] = None,
        num_val_images: int = 16,
        monitor: str = "val/acc",
        monitor_mode: str = "max",
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"task.label_smoothing must be in [0, 1), got {label_smoothing}")
        if not hasattr(backbone, "out_channels"):
            raise TypeError(
                f"backbone must expose out_channels (a dcn backbone), got {type(backbone).__name__}"
            )
        super().__init__(optimizer, scheduler)
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, num_classes)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

        self.train_metrics = _accuracy_metrics(num_classes, top5=False, prefix="train/")
        top5 = num_classes >= _TOP5_MIN_CLASSES
        self.val_metrics = _accuracy_metrics(num_classes, top5=top5, prefix="val/")
        self.test_metrics = _accuracy_metrics(num_classes, top5=top5, prefix="test/")
        # Several test sets: built per test run, when their number and names are known (on_test_epoch_start).
        self._set_names: List[str] = []
        self._set_metrics: Dict[str, MulticlassAccuracy] = {}
        self._pooled_test_loss: Optional[MeanMetric] = None

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

    def on_test_epoch_start(self) -> None:
        loaders = self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, (list, tuple)) else 1
        self._set_names, self._set_metrics, self._pooled_test_loss = [], {}, None
        if count < 2:
            return
        names = getattr(self.trainer.datamodule, "test_set_names", None)
        if names is None or len(names) != count:
            names = [f"set{k}" for k in range(count)]
        self._set_names = [str(n) for n in names]
        classes = self.head.fc.out_features
        self._set_metrics = {
            name: MulticlassAccuracy(classes, top_k=1, average="micro").to(self.device)
            for name in self._set_names
        }
        self._pooled_test_loss = MeanMetric().to(self.device)

    def test_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, logits, targets = self._step(batch)
        self.test_metrics.update(logits, targets)
        if not self._set_names:
            self.log("test/loss", loss, on_step=False, on_epoch=True)
            self.log_dict(self.test_metrics, on_step=False, on_epoch=True)
            return
        # Several sets: a key logged from several dataloaders would be suffixed per loader by Lightning,
        # so the metrics are only updated here and logged once, in on_test_epoch_end.
        self._set_metrics[self._set_names[dataloader_idx]].update(logits, targets)
        self._pooled_test_loss.update(loss, weight=targets.shape[0])

    def on_test_epoch_end(self) -> None:
        if not self._set_names:
            return
        # Logged from the epoch-end hook, these values reach every test loader's result dict (train.py
        # records the first) and the loggers once; torchmetrics' compute() already syncs across processes.
        self.log("test/loss", self._pooled_test_loss.compute())
        for key, value in self.test_metrics.compute().items():
            self.log(key, value)
        self.test_metrics.reset()
        for name in self._set_names:
            self.log(f"test/acc_{name}", self._set_metrics[name].compute())

    def validation_picture(self, items: Sequence[Tuple[Tensor, Any]]) -> Any:
        images = torch.stack([image for image, _ in items])
        targets = torch.as_tensor([int(target) for _, target in items])
        predicted = self(images.to(self.device)).argmax(1).cpu()
        fig = prediction_grid(images, predicted, targets, self.class_names())
        fig.suptitle(f"epoch {self.current_epoch}: predicted / true", fontsize=9)
        return fig


def _accuracy_metrics(num_classes: int, top5: bool, prefix: str) -> MetricCollection:
    """Fresh metric objects: ``acc`` (top-1) and optionally ``acc_top5``, micro-averaged."""
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if top5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)
