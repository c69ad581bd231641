"""Validation pictures of a classifier: images with their predicted / true class (correct in green,
wrong in red)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from dcn.figures import new_figure

__all__ = ["prediction_grid"]


def prediction_grid(
    images: torch.Tensor, predicted: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str] = ()
):
    """A matplotlib figure: ``images`` Tensor[B, C, H, W] (any range: each is stretched to [0, 1]),
    titled ``predicted / true`` (class names when given, else indices)."""
    n = len(images)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = new_figure(rows, cols, figsize=(1.3 * cols, 1.5 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    name = (lambda k: str(class_names[k])) if len(class_names) else str  # noqa: E731
    for ax, image, p, t in zip(axes.flat, images, predicted.tolist(), targets.tolist()):
        image = image.float()
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8)
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray", interpolation="nearest")
        else:
            ax.imshow(image[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"{name(p)} / {name(t)}", fontsize=8, color="green" if p == t else "red")
    fig.tight_layout()
    return fig
