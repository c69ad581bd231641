"""Run a tracker over a sequence under both protocols of :mod:`dcn.tasks.tracking.metrics`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol

import torch
from torch import Tensor

from dcn.geometry.boxes import box_overlap, centre_distance, xywh_to_cxcywh
from dcn.tasks.tracking.metrics import precision_at, success_auc, supervised_protocol

__all__ = ["SequenceScores", "evaluate_sequence", "run_one_pass", "summarize"]


class Tracker(Protocol):
    def init(self, image: Tensor, box: Tensor) -> None: ...

    def update(self, image: Tensor) -> Tensor: ...


@dataclass
class SequenceScores:
    """One sequence's scores: ``accuracy`` (NaN if no frame counted), ``failures``, ``success_auc``,
    ``precision20``, and the one-pass predictions ``boxes`` (``Tensor[T, 4]`` xywh, frame 0 = truth)."""

    name: str
    accuracy: float
    failures: int
    success_auc: float
    precision20: float
    boxes: Tensor


def run_one_pass(tracker: Tracker, frame: Callable[[int], Tensor], boxes: Tensor) -> Tensor:
    """Initialise on frame 0 with ``boxes[0]`` and track to the end -> ``Tensor[T, 4]`` xywh predictions."""
    predictions = [boxes[0].float()]
    tracker.init(frame(0), boxes[0])
    for t in range(1, boxes.shape[0]):
        predictions.append(tracker.update(frame(t)).float())
    return torch.stack(predictions)


def evaluate_sequence(
    tracker: Tracker,
    frame: Callable[[int], Tensor],
    boxes: Tensor,
    name: str = "",
    skip: int = 5,
    burnin: int = 10,
    known: Optional[Tensor] = None,
) -> SequenceScores:
    """Supervised protocol and OPE for one sequence.

    Args:
        tracker: ``init(image, box)`` / ``update(image) -> box`` (xywh).
        frame: ``frame(t)`` -> ``Tensor[3, H, W]`` RGB in [0, 1].
        boxes: ``Tensor[T, 4]`` true boxes, xywh.
        known: ``Tensor[T]`` bool, False for frames without a true box (not scored); None: all known.
    """
    known = torch.ones(boxes.shape[0], dtype=torch.bool) if known is None else known.bool().cpu()
    if not known[0]:
        raise ValueError(f"sequence {name}: the first frame needs a true box to start the tracker")
    truth = xywh_to_cxcywh(boxes.double())
    supervised = supervised_protocol(
        boxes.shape[0],
        initialize=lambda t: tracker.init(frame(t), boxes[t]),
        overlap=lambda t: float(box_overlap(xywh_to_cxcywh(tracker.update(frame(t)).double()), truth[t])),
        skip=skip,
        burnin=burnin,
        known=known,
    )
    predictions = run_one_pass(tracker, frame, boxes)
    scored = known.clone()
    scored[0] = False  # the initialisation frame is given, not tracked
    if scored.any():
        pred = xywh_to_cxcywh(predictions[scored].double())
        auc = success_auc(box_overlap(pred, truth[scored]))
        precision = precision_at(centre_distance(pred, truth[scored]), 20.0)
    else:  # nothing to score: a one-frame sequence
        auc = precision = float("nan")
    return SequenceScores(name, supervised.accuracy, supervised.num_failures, auc, precision, predictions)


def summarize(scores: List[SequenceScores]) -> Dict[str, float]:
    """Means over sequences (accuracy over the sequences that have one)."""

    def mean(values):
        values = [v for v in values if v == v]
        return sum(values) / len(values) if values else float("nan")

    return {
        "accuracy": mean([s.accuracy for s in scores]),
        "failures": mean([float(s.failures) for s in scores]),
        "success_auc": mean([s.success_auc for s in scores]),
        "precision20": mean([s.precision20 for s in scores]),
    }
