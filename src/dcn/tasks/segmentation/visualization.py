"""Validation pictures: image | true mask | predicted mask, one row per image, in VOC's colours
(drawn by :meth:`SegmentationTask.validation_picture` for the ValidationPictures callback)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from dcn.datamodules.voc.label_png import voc_palette

__all__ = ["colorize", "comparison_grid"]


def colorize(mask: Tensor) -> Tensor:
    """``mask`` (int Tensor[..., H, W], class indices or 255) -> uint8 Tensor[..., 3, H, W] in VOC's
    palette (255, ignored, is cream)."""
    palette = torch.from_numpy(voc_palette()).to(mask.device)
    return palette[mask.long().clamp(0, 255)].movedim(-1, -3)


def _to_uint8_image(images: Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> Tensor:
    """Undo the normalisation (or, without mean/std, stretch each image to [0, 255])."""
    images = images.detach().float()
    if mean is not None and std is not None:
        m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        images = images * s + m
    else:
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp(min=1e-6)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def comparison_grid(
    images: Tensor,
    targets: Tensor,
    preds: Tensor,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Tensor:
    """``images`` Tensor[B, C, H, W] (normalised), ``targets``/``preds`` Tensor[B, H, W] ->
    uint8 Tensor[3, B * H, 3 * W]: row b is image b, its true mask and its predicted mask."""
    rows = [_to_uint8_image(images, mean, std), colorize(targets), colorize(preds)]
    grid = torch.cat([r.cpu() for r in rows], dim=-1)  # [B, 3, H, 3W]
    return torch.cat(list(grid), dim=-2)  # [3, B*H, 3W]
