"""Box regression deltas relative to anchors (the R-CNN / SiamRPN parametrisation).

``dx = (x - xa) / wa``, ``dy = (y - ya) / ha``, ``dw = log(w / wa)``, ``dh = log(h / ha)`` for a box
``(x, y, w, h)`` and an anchor ``(xa, ya, wa, ha)``, all cxcywh. Encoding clamps the box size to at
least ``min_size`` pixels first, so a degenerate (zero or negative size) box gives finite targets instead of
``log(0) = -inf``; decoding clamps ``dw, dh`` so ``exp`` cannot overflow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["decode_boxes", "encode_boxes"]

MIN_SIZE = 1e-2  # pixels; far below any real target, far above log's trouble spot
MAX_LOG_SCALE = math.log(1000.0)  # a predicted box at most 1000x its anchor


def encode_boxes(boxes: Tensor, anchors: Tensor, min_size: float = MIN_SIZE) -> Tensor:
    """``boxes`` (``Tensor[..., 4]`` cxcywh) relative to ``anchors`` (broadcastable) ->
    ``Tensor[..., 4]`` deltas."""
    w = boxes[..., 2].clamp(min=min_size)
    h = boxes[..., 3].clamp(min=min_size)
    return torch.stack(
        [
            (boxes[..., 0] - anchors[..., 0]) / anchors[..., 2],
            (boxes[..., 1] - anchors[..., 1]) / anchors[..., 3],
            torch.log(w / anchors[..., 2]),
            torch.log(h / anchors[..., 3]),
        ],
        dim=-1,
    )


def decode_boxes(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of :func:`encode_boxes`: ``deltas`` (``Tensor[..., 4]``) on ``anchors`` -> cxcywh boxes."""
    return torch.stack(
        [
            anchors[..., 0] + deltas[..., 0] * anchors[..., 2],
            anchors[..., 1] + deltas[..., 1] * anchors[..., 3],
            anchors[..., 2] * torch.exp(deltas[..., 2].clamp(max=MAX_LOG_SCALE)),
            anchors[..., 3] * torch.exp(deltas[..., 3].clamp(max=MAX_LOG_SCALE)),
        ],
        dim=-1,
    )
