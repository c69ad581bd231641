"""Pixel-wise cross-entropy for segmentation, ignoring label 255."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dcn.datamodules.voc.label_png import IGNORE_INDEX

__all__ = ["segmentation_cross_entropy", "check_dense_pair"]


def check_dense_pair(maps: Tensor, labels: Tensor, maps_name: str, labels_name: str) -> None:
    """Raise a ValueError naming both shapes unless ``maps`` is (B, ·, H, W) and ``labels`` (B, H, W)."""
    if (
        maps.dim() != 4
        or labels.dim() != 3
        or maps.shape[0] != labels.shape[0]
        or maps.shape[-2:] != labels.shape[-2:]
    ):
        raise ValueError(
            f"expected {maps_name} and {labels_name} of the same B, H, W; got {tuple(maps.shape)} and "
            f"{tuple(labels.shape)}"
        )


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
    check_dense_pair(logits, target, "logits Tensor[B, K, H, W]", "target Tensor[B, H, W]")
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum()
    return total / count.clamp(min=1)
