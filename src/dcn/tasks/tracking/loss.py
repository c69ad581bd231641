"""SiamRPN loss: balanced binary cross-entropy on the drawn anchors + ``reg_weight`` x L1 box regression.

``loss = cls + reg_weight * reg`` (SiamRPN: ``reg_weight = 1.2``) where

* ``cls = 0.5 * mean BCE over positives + 0.5 * mean BCE over negatives`` (a term with no anchors is 0),
  so the few positives weigh as much as the many negatives, as in pysot;
* ``reg = mean over positives of sum_{x,y,w,h} |predicted delta - target delta|`` (0 without positives).

Only drawn anchors enter either term, and targets are indexed rather than multiplied by a mask, so a
degenerate or missing box (negative pairs) can never turn the loss into NaN.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from dcn.tasks.tracking.targets import NEGATIVE, POSITIVE, AnchorTargets

__all__ = ["flatten_head_outputs", "siamrpn_loss"]


def flatten_head_outputs(cls: Tensor, loc: Tensor) -> "tuple[Tensor, Tensor]":
    """Head maps in anchor order: ``cls`` ``Tensor[B, K, S, S]`` -> ``Tensor[B, K*S*S]`` logits and
    ``loc`` ``Tensor[B, 4K, S, S]`` (channel ``c * K + k`` holds coordinate c of anchor type k) ->
    ``Tensor[B, K*S*S, 4]`` deltas."""
    b, k = cls.shape[:2]
    if loc.shape[0] != b or loc.shape[1] != 4 * k or loc.shape[2:] != cls.shape[2:]:
        raise ValueError(
            f"loc must be Tensor[{b}, {4 * k}, S, S] for cls {tuple(cls.shape)}, got {tuple(loc.shape)}"
        )
    return cls.reshape(b, -1), loc.reshape(b, 4, -1).transpose(1, 2)


def siamrpn_loss(
    cls: Tensor, loc: Tensor, targets: AnchorTargets, reg_weight: float = 1.2
) -> Dict[str, Tensor]:
    """Loss terms for head outputs ``cls`` (``Tensor[B, K, S, S]`` logits) and ``loc``
    (``Tensor[B, 4K, S, S]``).

    Returns ``{"loss", "cls", "reg"}`` scalars.
    """
    logits, deltas = flatten_head_outputs(cls, loc)
    labels = targets.labels
    if labels.shape != logits.shape:
        raise ValueError(
            f"targets are for {tuple(labels.shape)} anchors but the head gives {tuple(logits.shape)}"
        )
    pos, neg = labels == POSITIVE, labels == NEGATIVE
    zero = logits.sum() * 0.0  # keeps the graph (and device/dtype) when a term is empty

    def bce(mask: Tensor, value: float) -> Tensor:
        if not mask.any():
            return zero
        selected = logits[mask]
        return F.binary_cross_entropy_with_logits(selected, torch.full_like(selected, value))

    cls_loss = 0.5 * bce(pos, 1.0) + 0.5 * bce(neg, 0.0)
    if pos.any():
        reg_loss = (deltas[pos] - targets.deltas.to(deltas)[pos]).abs().sum(-1).mean()
    else:
        reg_loss = zero
    return {"loss": cls_loss + reg_weight * reg_loss, "cls": cls_loss, "reg": reg_loss}
