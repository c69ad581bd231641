"""Which anchors learn what: SiamRPN's anchor targets for a batch of search patches.

For a positive pair (the search patch shows the template's object), anchors whose IoU with the target
box exceeds ``pos_iou`` (0.6) are positives — at most ``num_pos`` (16), drawn at random — and anchors
below ``neg_iou`` (0.3) are negatives, drawn so that positives plus negatives make ``num_total`` (64).
Anchors in between, and those not drawn, are ignored. For a negative pair (another object, or none)
every anchor is a negative candidate and ``num_total`` are drawn. Positives also get regression targets
(:func:`~dcn.tasks.tracking.box_coder.encode_boxes`); a positive pair whose box no anchor overlaps enough
has no positives (and only its classification loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from dcn.geometry.boxes import box_iou_pairwise
from dcn.tasks.tracking.box_coder import encode_boxes

__all__ = ["AnchorTargets", "TargetOptions", "anchor_targets"]

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


@dataclass(frozen=True)
class TargetOptions:
    """Anchor target settings (config ``task.targets``)."""

    pos_iou: float = 0.6  # anchors above this IoU with the target are positive candidates
    neg_iou: float = 0.3  # anchors below it are negative candidates
    num_pos: int = 16  # most positives drawn per pair
    num_total: int = 64  # positives plus negatives drawn per pair

    def __post_init__(self) -> None:
        if not 0 <= self.neg_iou <= self.pos_iou <= 1:
            raise ValueError(
                "task.targets needs 0 <= neg_iou <= pos_iou <= 1, "
                f"got neg_iou={self.neg_iou}, pos_iou={self.pos_iou}"
            )
        if not 0 <= self.num_pos <= self.num_total:
            raise ValueError(
                "task.targets needs 0 <= num_pos <= num_total, "
                f"got num_pos={self.num_pos}, num_total={self.num_total}"
            )


@dataclass
class AnchorTargets:
    """``labels``: ``Tensor[B, A]`` int64, 1 positive, 0 negative, -1 ignored; ``deltas``:
    ``Tensor[B, A, 4]`` regression targets (meaningful where ``labels == 1``)."""

    labels: Tensor
    deltas: Tensor


def _draw(candidates: Tensor, counts: Tensor, limit: int, generator: Optional[torch.Generator]) -> Tensor:
    """A random subset of each row's ``candidates`` (``Tensor[B, A]`` bool) of at most ``counts[b]``
    anchors."""
    if limit == 0 or candidates.shape[1] == 0:
        return torch.zeros_like(candidates)
    keys = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    keys = torch.where(candidates, keys, torch.full_like(keys, -1.0))
    k = min(limit, candidates.shape[1])
    top, index = keys.topk(k, dim=1)
    rank = torch.arange(k, device=candidates.device).expand_as(top)
    keep = (top >= 0) & (rank < counts[:, None])
    drawn = torch.zeros_like(candidates)
    drawn.scatter_(1, index, keep)
    return drawn


def anchor_targets(
    anchors: Tensor,
    boxes: Tensor,
    negative: Optional[Tensor] = None,
    options: TargetOptions = TargetOptions(),
    generator: Optional[torch.Generator] = None,
) -> AnchorTargets:
    """Labels and regression targets for every anchor of every search patch.

    Args:
        anchors: ``Tensor[A, 4]`` cxcywh (:func:`~dcn.tasks.tracking.anchors.make_anchors`).
        boxes: ``Tensor[B, 4]`` cxcywh target boxes in search-patch coordinates.
        negative: ``Tensor[B]`` bool, True for negative pairs (None: all positive).
        options: thresholds and sample sizes.
        generator: for the random draws (None: torch's global generator).
    """
    if anchors.dim() != 2 or anchors.shape[1] != 4:
        raise ValueError(f"anchors must be Tensor[A, 4], got {tuple(anchors.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be Tensor[B, 4], got {tuple(boxes.shape)}")
    batch = boxes.shape[0]
    if negative is None:
        negative = torch.zeros(batch, dtype=torch.bool, device=boxes.device)
    if negative.shape != (batch,):
        raise ValueError(f"negative must be Tensor[{batch}] bool, got {tuple(negative.shape)}")
    negative = negative.bool()
    anchors = anchors.to(boxes)
    iou = box_iou_pairwise(boxes, anchors)  # [B, A]
    pos_candidates = (iou > options.pos_iou) & ~negative[:, None]
    neg_candidates = (iou < options.neg_iou) | negative[:, None]
    full = torch.full((batch,), options.num_pos, device=boxes.device)
    positives = _draw(pos_candidates, full, options.num_pos, generator)
    n_neg = options.num_total - positives.sum(1)
    negatives = _draw(neg_candidates, n_neg, options.num_total, generator)
    labels = torch.full(iou.shape, IGNORE, dtype=torch.long, device=boxes.device)
    labels[negatives] = NEGATIVE
    labels[positives] = POSITIVE
    deltas = encode_boxes(boxes[:, None, :], anchors[None, :, :])
    return AnchorTargets(labels=labels, deltas=deltas)
