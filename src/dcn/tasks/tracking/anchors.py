"""SiamRPN anchors: ``k = len(ratios) * len(scales)`` boxes at every cell of the response map.

The response map of side ``S`` looks at a stride-8 grid of the search patch centred on the patch
centre: cell ``(i, j)`` (row, column) is centred at ``(c + (j - (S - 1) / 2) * stride,
c + (i - (S - 1) / 2) * stride)`` with ``c = search_size / 2``. (:class:`~dcn.tasks.tracking.model.SiamRPN`
crops its feature maps so the network's geometry is exactly this one.) An anchor of ratio
``r = h / w`` and scale ``s`` has the area of a ``(stride * s)^2`` square: ``w = stride * s / sqrt(r)``,
``h = w * r`` (SiamRPN's base size ``stride^2`` times ``s^2``).

Anchors are ordered ``(k, i, j)`` — anchor type major, as the head's channels are — and flattened:
``Tensor[k * S * S, 4]`` cxcywh in search-patch coordinates.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["anchor_shapes", "make_anchors"]


def anchor_shapes(stride: int, ratios: Sequence[float], scales: Sequence[float]) -> Tensor:
    """``Tensor[k, 2]`` (w, h) of the anchor types, ratio-major (ratio r, scale s at
    ``r_index * len(scales) + s_index``)."""
    if not ratios or not scales:
        raise ValueError(f"anchor ratios and scales must not be empty, got {list(ratios)} and {list(scales)}")
    if any(not (r > 0) for r in ratios) or any(not (s > 0) for s in scales):
        raise ValueError(f"anchor ratios and scales must be positive, got {list(ratios)} and {list(scales)}")
    shapes = []
    for r in ratios:
        for s in scales:
            w = stride * s / math.sqrt(r)
            shapes.append((w, w * r))
    return torch.tensor(shapes, dtype=torch.float32)


def make_anchors(
    score_size: int, stride: int, search_size: float, ratios: Sequence[float], scales: Sequence[float]
) -> Tensor:
    """All anchors of a ``score_size x score_size`` response map -> ``Tensor[k * S * S, 4]`` cxcywh.

    Args:
        score_size: side ``S`` of the response map.
        stride: pixels between neighbouring cells (8 for SiamRPN).
        search_size: side of the search patch in pixels (its centre is the grid's centre).
        ratios: anchor aspect ratios ``h / w`` (SiamRPN: 0.33, 0.5, 1, 2, 3).
        scales: anchor scales (SiamRPN: 8).
    """
    if score_size < 1:
        raise ValueError(f"score_size must be >= 1, got {score_size}")
    shapes = anchor_shapes(stride, ratios, scales)  # [k, 2]
    k = shapes.shape[0]
    offsets = (
        torch.arange(score_size, dtype=torch.float32) - (score_size - 1) / 2
    ) * stride + search_size / 2
    cy, cx = torch.meshgrid(offsets, offsets, indexing="ij")  # [S, S]: row i -> y, column j -> x
    anchors = torch.empty(k, score_size, score_size, 4)
    anchors[..., 0] = cx
    anchors[..., 1] = cy
    anchors[..., 2] = shapes[:, 0, None, None]
    anchors[..., 3] = shapes[:, 1, None, None]
    return anchors.reshape(-1, 4)
