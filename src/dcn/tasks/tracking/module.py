"""Siamese RPN tracking as a LightningModule: trained on frame pairs, tested by tracking whole sequences."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric

from dcn.datamodules.tracking.sequence import TrackingSequence
from dcn.tasks.base import DcnTask
from dcn.tasks.tracking.evaluation import SequenceScores, evaluate_sequence
from dcn.tasks.tracking.loss import siamrpn_loss
from dcn.tasks.tracking.model import SiamRPN
from dcn.tasks.tracking.targets import TargetOptions, anchor_targets
from dcn.tasks.tracking.tracker import SiamRPNTracker, TrackerOptions

__all__ = ["TrackingTask", "format_sequence_table"]

TEST_METRICS = ("accuracy", "failures", "success_auc", "precision20")


def _options(cls, value: Any, key: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    try:
        return cls(**dict(value.items()))
    except TypeError as error:
        raise TypeError(f"task.{key}: {error}") from None


class TrackingTask(DcnTask):
    """Train a :class:`~dcn.tasks.tracking.model.SiamRPN` and evaluate it as a tracker.

    Batches (see :mod:`dcn.datamodules.tracking.base`): train / val ``(template Tensor[B, 3, T, T],
    search Tensor[B, 3, N, N], box Tensor[B, 4] cxcywh in search pixels, negative Tensor[B] bool)``; test:
    one :class:`~dcn.datamodules.tracking.sequence.TrackingSequence` per batch.

    Logged: ``train/loss`` (and ``train/cls_loss``, ``train/reg_loss``), ``val/loss`` (on fixed pairs,
    with anchor draws seeded by batch index); at test end ``test/accuracy``, ``test/failures``
    (VOT supervised protocol), ``test/success_auc`` and ``test/precision20`` (one-pass evaluation),
    each a mean over the test sequences (:mod:`dcn.tasks.tracking.metrics`), plus a per-sequence table.

    Args:
        backbone: a dcn backbone; its stages after ``feature`` are dropped.
        optimizer: ``params -> Optimizer`` (Hydra ``_partial_``).
        num_classes: must be None (tracking is class-agnostic; ``train.py`` passes the datamodule's).
        scheduler: optional ``optimizer -> LRScheduler`` (Hydra ``_partial_``), stepped per
            ``scheduler_interval``.
        feature, head, channels, template_size, search_size, ratios, scales: the network
            (:class:`~dcn.tasks.tracking.model.SiamRPN`).
        targets: :class:`~dcn.tasks.tracking.targets.TargetOptions` fields.
        reg_weight: weight of the box regression loss (1.2).
        tracker: :class:`~dcn.tasks.tracking.tracker.TrackerOptions` fields.
        skip, burnin: VOT protocol settings (5, 10).
        backbone_lr_mult: backbone learning rate / head learning rate.
        monitor, monitor_mode: the metric that selects the best checkpoint.
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: Optional[int] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        scheduler_interval: str = "epoch",
        feature: Optional[str] = None,
        head: str = "depthwise",
        channels: int = 256,
        template_size: int = 127,
        search_size: int = 255,
        ratios: Sequence[float] = (0.33, 0.5, 1.0, 2.0, 3.0),
        scales: Sequence[float] = (8.0,),
        targets: Any = None,
        reg_weight: float = 1.2,
        tracker: Any = None,
        skip: int = 5,
        burnin: int = 10,
        backbone_lr_mult: float = 1.0,
        monitor: str = "val/loss",
        monitor_mode: str = "min",
    ) -> None:
        if num_classes is not None:
            raise ValueError(
                f"task=tracking got num_classes={num_classes}: it needs a tracking datamodule "
                "(data=synthetic_vot, vot or got10k), whose num_classes is None"
            )
        if not backbone_lr_mult >= 0:
            raise ValueError(f"task.backbone_lr_mult must be >= 0, got {backbone_lr_mult}")
        target_options = _options(TargetOptions, targets, "targets")
        tracker_options = _options(TrackerOptions, tracker, "tracker")
        # The hyper-parameters record these locals: the options as plain dicts, the anchors as floats.
        targets, tracker = dataclasses.asdict(target_options), dataclasses.asdict(tracker_options)
        ratios, scales = [float(r) for r in ratios], [float(s) for s in scales]
        super().__init__(optimizer, scheduler)
        self.target_options, self.tracker_options = target_options, tracker_options
        self.net = SiamRPN(
            backbone,
            feature=feature,
            template_size=template_size,
            search_size=search_size,
            head=head,
            channels=channels,
            ratios=ratios,
            scales=scales,
        )
        self.test_means = nn.ModuleDict({name: MeanMetric(nan_strategy="ignore") for name in TEST_METRICS})
        self.test_scores: List[SequenceScores] = []

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    def forward(self, template: Tensor, search: Tensor) -> Tuple[Tensor, Tensor]:
        return self.net(template, search)

    def make_tracker(self) -> SiamRPNTracker:
        """A tracker over this module's network (put the module in eval mode first)."""
        return SiamRPNTracker(self.net, self.tracker_options)

    def setup(self, stage: str) -> None:
        pairs = getattr(getattr(self.trainer, "datamodule", None), "pairs", None) if self._trainer else None
        if pairs is not None:
            given = (pairs.template_size, pairs.search_size)
            wanted = (self.net.geometry.template_size, self.net.geometry.search_size)
            if given != wanted:
                raise ValueError(
                    f"data.pairs gives {given[0]}/{given[1]} template/search patches but task.template_size/"
                    f"search_size are {wanted[0]}/{wanted[1]}; set them equal"
                )

    def _loss(
        self, batch: Sequence[Tensor], generator: Optional[torch.Generator] = None
    ) -> Dict[str, Tensor]:
        if len(batch) != 4:
            raise ValueError(
                f"tracking batches are (template, search, box, negative); got {len(batch)} items"
            )
        template, search, boxes, negative = batch
        cls, loc = self.net(template, search)
        targets = anchor_targets(self.net.anchors, boxes, negative, self.target_options, generator)
        return siamrpn_loss(cls, loc, targets, self.hparams.reg_weight)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        terms = self._loss(batch)
        size = batch[0].shape[0]
        self.log("train/loss", terms["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("train/cls_loss", terms["cls"], on_epoch=True, batch_size=size)
        self.log("train/reg_loss", terms["reg"], on_epoch=True, batch_size=size)
        return terms["loss"]

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        generator = torch.Generator(device=batch[0].device).manual_seed(batch_idx)  # same anchors every epoch
        terms = self._loss(batch, generator)
        self.log("val/loss", terms["loss"], on_epoch=True, prog_bar=True, batch_size=batch[0].shape[0])

    def on_test_epoch_start(self) -> None:
        self.test_scores = []

    def test_step(self, sequence: TrackingSequence, batch_idx: int) -> None:
        if not isinstance(sequence, TrackingSequence):
            raise TypeError(
                f"tracking test batches are TrackingSequence objects, got {type(sequence).__name__}"
            )
        scores = evaluate_sequence(
            self.make_tracker(),
            sequence.frame,
            sequence.boxes.cpu(),
            sequence.name,
            self.hparams.skip,
            self.hparams.burnin,
            sequence.known.cpu(),
        )
        self.test_scores.append(scores)
        for name in TEST_METRICS:
            value = float(getattr(scores, name))
            if value == value:  # a sequence without counted frames has no accuracy
                self.test_means[name].update(torch.tensor(value, dtype=torch.float32, device=self.device))

    def on_test_epoch_end(self) -> None:
        for name in TEST_METRICS:
            metric = self.test_means[name]
            # No update at all (e.g. accuracy when every sequence failed before its burn-in ended): NaN.
            value = (
                metric.compute() if metric.update_called else torch.tensor(float("nan"), device=self.device)
            )
            self.log(f"test/{name}", value)
            metric.reset()
        rank_zero_info(format_sequence_table(self.test_scores))

    def param_groups(self) -> List[Dict[str, Any]]:
        backbone = [p for p in self.net.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        groups = [
            {
                "params": [p for p in self.net.parameters() if p.requires_grad and id(p) not in ids],
                "name": "head",
            }
        ]
        if self.hparams.backbone_lr_mult > 0:  # 0: the backbone is not trained at all
            groups.append({"params": backbone, "name": "backbone", "lr_mult": self.hparams.backbone_lr_mult})
        return groups


def format_sequence_table(scores: Sequence[SequenceScores]) -> str:
    """Plain-text per-sequence table: accuracy, failures, success AUC, precision@20px."""
    width = max([len(s.name) for s in scores] + [len("sequence")])
    lines = [f"{'sequence':<{width}}  {'acc':>6}  {'fail':>4}  {'AUC':>6}  {'P@20':>6}"]

    def fmt(v: float) -> str:
        return f"{v:6.3f}" if v == v else f"{'-':>6}"

    for s in scores:
        lines.append(
            f"{s.name:<{width}}  {fmt(s.accuracy)}  {s.failures:>4d}  "
            f"{fmt(s.success_auc)}  {fmt(s.precision20)}"
        )
    return "\n".join(lines)
