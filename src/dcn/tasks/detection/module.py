"""Object detection as a LightningModule: Faster R-CNN (torchvision's framework) over a dcn backbone."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from dcn.tasks.base import DcnTask, builder_options
from dcn.tasks.detection.metrics import DetectionMetrics
from dcn.tasks.detection.model import build_faster_rcnn
from dcn.tasks.detection.visualization import detection_grid
from dcn.tasks.detection.voc_ap import format_ap_table

__all__ = ["DetectionTask", "LOSS_NAMES"]

Batch = Tuple[List[Tensor], List[Dict[str, Tensor]]]
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


class DetectionTask(DcnTask):
    """Train and evaluate Faster R-CNN (:func:`~dcn.tasks.detection.model.build_faster_rcnn`) on
    ``(images, targets)`` batches in torchvision's list form.

    Batches: ``images`` List[Tensor[3, H_i, W_i]] in [0, 1] (sizes may differ; the model resizes to
    ``min_size`` / ``max_size`` and normalises), ``targets`` List[dict] with ``boxes`` Tensor[K, 4]
    (xyxy pixels), ``labels`` Tensor[K] int64 in ``1..num_classes-1`` and, for evaluation,
    ``difficult`` Tensor[K] bool (ignored by the VOC metric). ``K = 0`` is allowed.
    ``forward(images)`` returns torchvision's detections: List[{"boxes", "labels", "scores"}].

    Logged: ``train/loss`` (sum) and its four terms ``train/loss_classifier``, ``train/loss_box_reg``,
    ``train/loss_objectness``, ``train/loss_rpn_box_reg``; per validation / test epoch ``mAP`` and the
    chosen metrics' numbers (see :mod:`dcn.tasks.detection.metrics`: ``mAP50``, ``mAP70``,
    ``coco/mAP``, ...), plus ``test/AP50/<class>`` (VOC) and a per-class AP table at test end.
    torchvision's model returns losses only in training mode, so there is no validation loss.
    Validation pictures: the first ``num_val_images`` validation images with their true and
    predicted boxes (scores above ``score_threshold_for_images``).

    Optimisation: ``optimizer`` / ``scheduler`` factories as in the other tasks; the learning rate
    ramps linearly from ``warmup_factor`` x to 1 x the scheduled rate over the first
    ``warmup_iters`` steps (Detectron's and torchvision's warm-up for detection).

    Args:
        backbone: a dcn backbone.
        num_classes: classes including background (``train.py`` takes it from the datamodule).
        optimizer, scheduler, scheduler_interval: as in the other tasks.
        warmup_iters, warmup_factor: linear warm-up (0 iterations: none).
        metrics: ``["voc"]``, ``["coco"]`` or both (the first gives ``mAP``).
        voc_iou_thresholds, voc_use_07_metric: VOC AP settings (11-point interpolation for VOC2007).
        coco_backend: ``pycocotools`` or ``faster_coco_eval``.
        class_names: names for tables and pictures; None takes the datamodule's.
        num_val_images: validation images drawn per epoch (0: none).
        monitor, monitor_mode: the metric that selects the best checkpoint.
        **model_options: the network's options, the keyword arguments of :func:`build_faster_rcnn`
            (``layout``, ``roi_pool``, ``fpn_features``, ``fpn_channels``, ``c4_features``,
            ``anchor_sizes``, ``aspect_ratios``, ``min_size``, ``max_size``, ``image_mean``,
            ``image_std``, ``representation_size``, ``pool_size``, ``sampling_ratio``,
            ``deform_roi_pool``, ``rpn``, ``roi_heads``, ``freeze_bn``, ``frozen_stages``), with its
            defaults; an unknown name is an error.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Optional[Callable[..., Any]] = None,
        scheduler_interval: str = "epoch",
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
        metrics: Sequence[str] = ("voc",),
        voc_iou_thresholds: Sequence[float] = (0.5, 0.7),
        voc_use_07_metric: bool = False,
        coco_backend: str = "pycocotools",
        class_names: Optional[Sequence[str]] = None,
        num_val_images: int = 4,
        score_threshold_for_images: float = 0.5,
        monitor: str = "val/mAP",
        monitor_mode: str = "max",
        **model_options: Any,
    ) -> None:
        if warmup_iters < 0 or not 0 < warmup_factor <= 1:
            raise ValueError(
                "task.warmup_iters must be >= 0 and task.warmup_factor in (0, 1], "
                f"got {warmup_iters} and {warmup_factor}"
            )
        # Recorded with every default in the hyper-parameters (super().__init__ reads this local).
        model_options = builder_options(build_faster_rcnn, model_options, taken=("backbone", "num_classes"))
        super().__init__(optimizer, scheduler)
        self.net = build_faster_rcnn(backbone, num_classes, **model_options)
        hp = self.hparams
        metric_args = dict(
            kinds=hp.metrics,
            voc_iou_thresholds=hp.voc_iou_thresholds,
            voc_use_07_metric=voc_use_07_metric,
            coco_backend=coco_backend,
        )
        self.val_metrics = DetectionMetrics(num_classes, **metric_args)
        self.test_metrics = DetectionMetrics(num_classes, **metric_args)
        self.test_scores: Optional[Dict[str, Tensor]] = None  # the last test run's scores, for callers

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone.body

    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        return self.net(_check_images(images))

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = _check_batch(batch, self.hparams.num_classes)
        losses = self.net(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        n = len(images)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        # Warm-up scales the scheduled rate for this one step only, so any scheduler composes with it.
        factor = self.warmup_multiplier(self.trainer.global_step)
        groups = optimizer.param_groups
        scheduled = [g["lr"] for g in groups]
        if factor != 1.0:
            for g in groups:
                g["lr"] *= factor
        try:
            optimizer.step(closure=optimizer_closure)
        finally:
            for g, lr in zip(groups, scheduled):
                g["lr"] = lr

    def warmup_multiplier(self, step: int) -> float:
        """``warmup_factor`` at step 0 rising linearly to 1 at ``warmup_iters``."""
        total = self.hparams.warmup_iters
        if step >= total:
            return 1.0
        alpha = step / total
        return self.hparams.warmup_factor * (1 - alpha) + alpha

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, batch: Batch, metrics: Any) -> None:
        """Detect the batch's images and add them to ``metrics`` (the validation or test metrics)."""
        images, targets = _check_batch(batch, self.hparams.num_classes)
        metrics.update(self.net(images), targets)

    @staticmethod
    def _epoch_scores(metrics: Any) -> Tuple[Dict[str, Tensor], Any]:
        """The epoch's (scores, VOC table or None); the metrics start again from zero."""
        result = metrics.compute()
        metrics.reset()
        return result

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        scores, _ = self._epoch_scores(self.val_metrics)
        for name, value in scores.items():
            self.log(f"val/{name}", value, prog_bar=name == "mAP")

    def validation_picture(self, items: Sequence[Tuple[Tensor, Dict[str, Tensor]]]) -> Any:
        images = [image for image, _ in items]
        detections = self.net([image.to(self.device) for image in images])
        cpu = lambda d: {k: v.detach().cpu() for k, v in d.items() if torch.is_tensor(v)}  # noqa: E731
        return detection_grid(
            images,
            [cpu(t) for _, t in items],
            [cpu(d) for d in detections],
            self.class_names(),
            score_threshold=self.hparams.score_threshold_for_images,
            title=f"epoch {self.current_epoch}: truth | predictions",
        )

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        scores, voc = self._epoch_scores(self.test_metrics)
        self.test_scores = scores
        for name, value in scores.items():
            self.log(f"test/{name}", value)
        if voc is not None:
            names = self.class_names()
            thresholds = self.hparams.voc_iou_thresholds
            for name, ap in zip(names[1:], voc["ap"][0, 1:].tolist()):
                if ap == ap:  # classes without ground truth have no AP (NaN): not logged
                    self.log(f"test/AP{round(100 * thresholds[0])}/{name}", float(ap))
            rank_zero_info(format_ap_table(names, voc, thresholds))


def _check_images(images: Any) -> List[Tensor]:
    if not isinstance(images, (list, tuple)) or not all(
        torch.is_tensor(i) and i.dim() == 3 and i.shape[0] == 3 for i in images
    ):
        raise ValueError(
            "detection expects images as a list of Tensor[3, H, W] (torchvision's detection form), got "
            + (
                f"a Tensor of shape {tuple(images.shape)}"
                if torch.is_tensor(images)
                else type(images).__name__
            )
        )
    return list(images)


def _check_batch(batch: Any, num_classes: int) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise ValueError("detection batches must be (images: List[Tensor[3, H, W]], targets: List[dict])")
    images, targets = _check_images(batch[0]), list(batch[1])
    if len(targets) != len(images):
        raise ValueError(f"detection batch has {len(images)} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"target {i} must be a dict with 'boxes' Tensor[K, 4] and 'labels' Tensor[K]")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"target {i}: expected boxes Tensor[K, 4] and labels Tensor[K], got {tuple(boxes.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"target {i}: labels must be in 1..{num_classes - 1} (0 is background), got "
                f"{sorted(set(labels.tolist()))}; does the datamodule's class list match num_classes?"
            )
    return images, targets
