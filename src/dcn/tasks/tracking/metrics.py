"""Tracking metrics: the VOT supervised protocol and one-pass evaluation (OPE), on overlap sequences.

**VOT supervised protocol** (:func:`supervised_protocol`). The tracker starts on frame 0 with the true
box. A frame whose overlap (IoU) with the truth is 0 is a *failure*; the tracker is re-initialised with
the true box ``skip`` (5) frames later. *Robustness* is the number of failures in the sequence
(``test/failures``: the mean over sequences). *Accuracy* is the mean overlap over the frames tracked
without failure, leaving out the ``burnin`` (10) frames starting at each (re-)initialisation (the
initialisation frame and the 9 after it) and the failure frames (``test/accuracy``: the mean over
sequences of each sequence's accuracy; a sequence without any counted frame has none and is left out).

**One-pass evaluation** (:func:`success_auc`, :func:`precision_at`). The tracker starts on frame 0 and is
never reset; frames 1..T-1 are scored. The *success curve* is the fraction of frames whose overlap
exceeds a threshold, at 21 thresholds 0, 0.05, ..., 1; ``test/success_auc`` is its mean (the area under
it). ``test/precision20`` is the fraction of frames whose predicted centre lies within 20 pixels of the
true centre. Both are computed per sequence and averaged over sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import Tensor

__all__ = ["SupervisedResult", "precision_at", "success_auc", "success_curve", "supervised_protocol"]

SUCCESS_THRESHOLDS = torch.linspace(0, 1, 21, dtype=torch.float64)


@dataclass
class SupervisedResult:
    """Outcome of the supervised protocol on one sequence.

    ``overlaps``: ``Tensor[T]`` float64, the overlap of each frame counted for accuracy, NaN elsewhere;
    ``failures``: failure frame indices; ``inits``: (re-)initialisation frame indices.
    """

    overlaps: Tensor
    failures: List[int] = field(default_factory=list)
    inits: List[int] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Mean counted overlap (NaN when no frame counts)."""
        valid = self.overlaps[~torch.isnan(self.overlaps)]
        return float(valid.mean()) if valid.numel() else math.nan

    @property
    def num_failures(self) -> int:
        return len(self.failures)


def supervised_protocol(
    num_frames: int,
    initialize: Callable[[int], None],
    overlap: Callable[[int], float],
    skip: int = 5,
    burnin: int = 10,
    known: Optional[Tensor] = None,
) -> SupervisedResult:
    """Run the VOT supervised protocol over ``num_frames`` frames.

    Args:
        num_frames: sequence length T.
        initialize: ``initialize(t)`` starts the tracker on frame t with the true box.
        overlap: ``overlap(t)`` advances the tracker to frame t (always the frame after the last one it
            saw) and returns its overlap with the truth there.
        skip: frames from a failure to the re-initialisation (VOT: 5).
        burnin: frames from each initialisation, the initialisation frame included, left out of accuracy
            (VOT: 10).
        known: ``Tensor[T]`` bool, False where the truth is unknown (e.g. the object is absent): the
            tracker still runs through such frames, but they are neither failures nor counted, and
            (re-)initialisation waits for the next known frame. None: every frame is known.
    """
    if skip < 1 or burnin < 1:
        raise ValueError(f"skip and burnin must be >= 1, got skip={skip}, burnin={burnin}")
    overlaps = torch.full((num_frames,), math.nan, dtype=torch.float64)
    result = SupervisedResult(overlaps)
    known_at = (lambda t: True) if known is None else (lambda t: bool(known[t]))
    t = 0
    while t < num_frames:
        if not known_at(t):
            t += 1
            continue
        initialize(t)
        result.inits.append(t)
        start, t = t, t + 1
        while t < num_frames:
            value = float(overlap(t))
            if not known_at(t):
                t += 1
                continue
            if not value > 0:  # zero overlap (or NaN from a broken box) is a failure
                result.failures.append(t)
                t += skip
                break
            if t - start >= burnin:
                overlaps[t] = value
            t += 1
    return result


def success_curve(overlaps: Tensor, thresholds: Tensor = SUCCESS_THRESHOLDS) -> Tensor:
    """Fraction of ``overlaps`` (``Tensor[T]``) strictly above each threshold ->
    ``Tensor[len(thresholds)]``."""
    if overlaps.numel() == 0:
        raise ValueError("success_curve needs at least one overlap")
    overlaps = torch.nan_to_num(overlaps.double(), nan=0.0)  # a missing prediction counts as a miss
    return (overlaps[None, :] > thresholds.to(overlaps)[:, None]).double().mean(dim=1)


def success_auc(overlaps: Tensor, thresholds: Tensor = SUCCESS_THRESHOLDS) -> float:
    """Area under the success curve: its mean over the (21, evenly spaced) thresholds."""
    return float(success_curve(overlaps, thresholds).mean())


def precision_at(centre_errors: Tensor, pixels: float = 20.0) -> float:
    """Fraction of frames whose centre error (``Tensor[T]``, pixels) is at most ``pixels``."""
    if centre_errors.numel() == 0:
        raise ValueError("precision_at needs at least one centre error")
    errors = torch.nan_to_num(centre_errors.double(), nan=math.inf)
    return float((errors <= pixels).double().mean())
