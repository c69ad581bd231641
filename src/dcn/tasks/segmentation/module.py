"""Semantic segmentation as a LightningModule: backbone -> DeepLab head -> pixel cross-entropy."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from dcn.backbones.frozen_bn import freeze_batch_norm
from dcn.tasks.base import DcnTask, builder_options
from dcn.tasks.segmentation.deeplab import DeepLab
from dcn.tasks.segmentation.loss import check_dense_pair, segmentation_cross_entropy
from dcn.tasks.segmentation.metrics import SegmentationMetrics
from dcn.tasks.segmentation.visualization import comparison_grid

__all__ = ["SegmentationTask", "format_class_table"]


class SegmentationTask(DcnTask):
    """Train and evaluate a DeepLab segmentation network on ``(images, masks)`` batches.

    Batches: ``images`` Tensor[B, C, H, W] float, ``masks`` Tensor[B, H, W] int64 with class indices in
    ``[0, num_classes)`` or 255 (ignored). ``forward(images)`` returns logits Tensor[B, num_classes, H, W].

    Logged: ``train/loss`` (per step and epoch); ``val/loss``, ``val/mIoU``, ``val/pixel_acc``,
    ``val/mean_class_acc`` per epoch; the same under ``test/`` plus ``test/IoU/<class name>`` for each
    class present in the test split's ground truth or predictions, and a per-class IoU table printed at
    test end. mIoU etc. come from one confusion matrix over the whole split (see
    :mod:`dcn.tasks.segmentation.metrics`). Validation pictures: the first ``num_val_images``
    validation images with their true and predicted masks and a legend of the class colours
    (:mod:`dcn.tasks.segmentation.visualization`).

    Optimisation: the head's learning rate is ``head_lr_mult`` times the backbone's (the optimizer's
    ``lr``), as DeepLab fine-tunes a pretrained backbone under a freshly initialised head. A scheduler
    whose constructor takes ``total_iters`` and whose config leaves it unset (``PolynomialLR``, the
    "poly" schedule) gets the run's total number of optimizer steps; it is stepped per
    ``scheduler_interval``.

    Args:
        backbone: a dcn backbone (its output stride sets the ASPP rates).
        num_classes: classes including background (``train.py`` takes it from the datamodule).
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_`` optimizer).
        scheduler: optional ``optimizer -> LRScheduler`` (Hydra ``_partial_``).
        scheduler_interval: "step" (poly LR) or "epoch".
        head_lr_mult: head learning rate / backbone learning rate.
        freeze_bn: replace the backbone's BatchNorm layers by frozen ones (fixed statistics and affine
            parameters); the head's BatchNorm keeps training.
        class_names: names for the per-class table; None takes the datamodule's ``class_names`` when
            there is one, else ``class_<k>``.
        num_val_images: validation images drawn per epoch (0: none).
        monitor, monitor_mode: the metric that selects the best checkpoint ("val/mIoU", "max").
        **model_options: the network's options, the keyword arguments of
            :class:`~dcn.tasks.segmentation.deeplab.DeepLab` (``head``, ``aspp_rates``,
            ``aspp_channels``, ``aspp_dropout``, ``low_level_feature``, ``low_level_channels``,
            ``decoder_channels``), with its defaults; an unknown name is an error.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Optional[Callable[..., Any]] = None,
        scheduler_interval: str = "step",
        head_lr_mult: float = 10.0,
        freeze_bn: bool = False,
        class_names: Optional[Sequence[str]] = None,
        num_val_images: int = 4,
        monitor: str = "val/mIoU",
        monitor_mode: str = "max",
        **model_options: Any,
    ) -> None:
        if not head_lr_mult > 0:
            raise ValueError(f"task.head_lr_mult must be > 0, got {head_lr_mult}")
        # Recorded with every default in the hyper-parameters (super().__init__ reads this local).
        model_options = builder_options(DeepLab, model_options, taken=("backbone", "num_classes"))
        super().__init__(optimizer, scheduler)
        if freeze_bn:
            backbone = freeze_batch_norm(backbone)
        self.net = DeepLab(backbone, num_classes, **model_options)
        self.val_metrics = SegmentationMetrics(num_classes)
        self.test_metrics = SegmentationMetrics(num_classes)
        self.test_scores: Optional[Dict[str, Tensor]] = None  # the last test run's scores, for callers

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def _step(self, batch: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        images, masks = batch
        check_dense_pair(
            images, masks, "segmentation batches of images Tensor[B, C, H, W]", "masks Tensor[B, H, W]"
        )
        logits = self(images)
        return segmentation_cross_entropy(logits, masks), logits

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._step(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits = self._step(batch)
        preds = logits.argmax(dim=1)
        self.val_metrics.update(preds, batch[1])
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch[0].shape[0])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        self.val_metrics.reset()
        for name in ("mIoU", "pixel_acc", "mean_class_acc"):
            self.log(f"val/{name}", scores[name].float(), prog_bar=name == "mIoU")

    def validation_picture(self, items: Sequence[Tuple[Tensor, Tensor]]) -> Any:
        """A figure with a row per item: image | true mask | predicted mask, under column headers and
        above a legend naming the class colours (:func:`comparison_grid`). Items may differ in size
        (no validation crop): each is predicted on its own."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        images = [image for image, _ in items]
        preds = [self(image[None].to(self.device)).argmax(1)[0].cpu() for image in images]
        return comparison_grid(
            images, [mask for _, mask in items], preds, mean, std, class_names=self.class_names()
        )

    def test_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits = self._step(batch)
        self.test_metrics.update(logits.argmax(dim=1), batch[1])
        self.log("test/loss", loss, on_epoch=True, batch_size=batch[0].shape[0])

    def on_test_epoch_end(self) -> None:
        scores = self.test_metrics.compute()
        self.test_metrics.reset()
        self.test_scores = scores
        for name in ("mIoU", "pixel_acc", "mean_class_acc"):
            self.log(f"test/{name}", scores[name].float())
        names = self.class_names()
        for name, iou in zip(names, scores["iou"].tolist()):
            if iou == iou:  # classes absent from truth and predictions have no IoU (NaN): not logged
                self.log(f"test/IoU/{name}", float(iou))
        rank_zero_info(format_class_table(names, scores))

    def param_groups(self) -> List[Dict[str, Any]]:
        return [
            {"params": [p for p in self.net.backbone_parameters() if p.requires_grad], "name": "backbone"},
            {
                "params": [p for p in self.net.head_parameters() if p.requires_grad],
                "name": "head",
                "lr_mult": self.hparams.head_lr_mult,
            },
        ]


def format_class_table(names: Sequence[str], scores: Dict[str, Tensor]) -> str:
    """A plain-text table: class, IoU and accuracy as fractions, like every metric dcn prints (``-``
    where undefined: a class absent from truth and predictions), then the means."""
    width = max([len(n) for n in names] + [len("mean")])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}"]

    def fmt(value: float) -> str:
        return f"{value:6.4f}" if value == value else f"{'-':>6}"

    for name, iou, acc in zip(names, scores["iou"].tolist(), scores["class_acc"].tolist()):
        lines.append(f"{name:<{width}}  {fmt(iou)}  {fmt(acc)}")
    lines.append(f"{'mean':<{width}}  {fmt(float(scores['mIoU']))}  {fmt(float(scores['mean_class_acc']))}")
    lines.append(f"pixel accuracy {fmt(float(scores['pixel_acc'])).strip()}")
    return "\n".join(lines)
