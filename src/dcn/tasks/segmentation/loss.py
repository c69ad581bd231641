"""Pixel-wise cross-entropy for segmentation, ignoring label 255."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dcn.datamodules.voc.label_png import IGNORE_INDEX

__all__ = ["segmentation_cross_entropy"]


def segmentation_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over the pixels whose label is not ``ignore_index``.

    Args:
        logits: Tensor[B, K, H, W] unnormalised class scores.
        target: Tensor[B, H, W] int64 class indices in ``[0, K)`` or ``ignore_index``.

    Returns:
        A scalar. A batch whose pixels are all ignored (e.g. a crop that fell entirely into padding)
        gives 0 with a zero gradient, where ``F.cross_entropy`` would return NaN (0 / 0) and poison the
        weights.
    """
    if (
        logits.dim() != 4
        or target.dim() != 3
        or logits.shape[0] != target.shape[0]
        or logits.shape[-2:] != target.shape[-2:]
    ):
        raise ValueError(
            f"expected logits Tensor[B, K, H, W] and target Tensor[B, H, W] of the same B, H, W; got logits "
            f"{tuple(logits.shape)} and target {tuple(target.shape)}"
        )
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum()
    return total / count.clamp(min=1)
