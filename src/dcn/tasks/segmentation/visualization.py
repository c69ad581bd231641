"""Validation pictures: image | true mask | predicted mask, one row per image, in VOC's colours,
under column headers and above a legend naming the colours (drawn by
:meth:`SegmentationTask.validation_picture` for the ValidationPictures callback)."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from dcn.datamodules.voc.label_png import voc_palette
from dcn.figures import new_figure

__all__ = ["COLUMNS", "IGNORE_INDEX", "colorize", "comparison_grid", "legend_name"]

COLUMNS = ("image", "truth", "prediction")
IGNORE_INDEX = 255  # VOC's "void" border label, drawn cream
_LEGEND_COLUMNS = 6


def colorize(mask: Tensor) -> Tensor:
    """``mask`` (int Tensor[..., H, W], class indices or 255) -> uint8 Tensor[..., 3, H, W] in VOC's
    palette (255, ignored, is cream)."""
    palette = torch.from_numpy(voc_palette()).to(mask.device)
    return palette[mask.long().clamp(0, 255)].movedim(-1, -3)


def _to_uint8_image(
    images: Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]
) -> Tensor:
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


def legend_name(class_names: Sequence[str], index: int) -> str:
    """The legend's name of mask value ``index``: ``class_names[index]``, ``class <k>`` past the end of
    the list, ``ignored`` for 255."""
    if index == IGNORE_INDEX:
        return "ignored"
    return class_names[index] if 0 <= index < len(class_names) else f"class {index}"


def comparison_grid(
    images: Union[Tensor, Sequence[Tensor]],
    targets: Union[Tensor, Sequence[Tensor]],
    preds: Union[Tensor, Sequence[Tensor]],
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    class_names: Sequence[str] = (),
):
    """A matplotlib figure (the caller saves and closes it): row b is image b, its true mask and its
    predicted mask under the column headers ``image | truth | prediction``, and below the rows a
    legend of the colours that occur in the truth or the predictions, named by ``class_names``.

    Args:
        images: Tensor[B, C, H, W], or B tensors [C, H_b, W_b] of different sizes; normalised with
            ``mean``/``std`` (undone for display; without them each image is stretched to full range).
        targets, preds: Tensor[B, H, W] or B tensors [H_b, W_b]: class indices, or 255 (ignored).
        class_names: names indexed by class (missing ones are shown as ``class <k>``).
    """
    from matplotlib.patches import Patch

    if not len(images):
        raise ValueError("comparison_grid needs at least one image")
    if not len(images) == len(targets) == len(preds):
        raise ValueError(
            f"need as many targets and predictions as images, got {len(images)}, {len(targets)}, {len(preds)}"
        )
    present: set = set()
    for mask in list(targets) + list(preds):
        present.update(int(v) for v in torch.as_tensor(mask).unique().tolist())
    legend_rows = math.ceil(len(present) / _LEGEND_COLUMNS)
    legend_inches = 0.3 + 0.25 * legend_rows
    rows = len(images)
    fig, axes = new_figure(rows, 3, figsize=(9, 2.9 * rows + 0.3 + legend_inches), squeeze=False)
    for row, (image, target, pred) in enumerate(zip(images, targets, preds)):
        pixels = _to_uint8_image(image[None], mean, std)[0]
        for ax, picture in zip(axes[row], (pixels, colorize(target), colorize(pred))):
            ax.imshow(picture.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, header in zip(axes[0], COLUMNS):
        ax.set_title(header, fontsize=10)
    palette = voc_palette()
    handles: List[Patch] = [
        Patch(
            facecolor=palette[k] / 255.0, edgecolor="black", linewidth=0.5, label=legend_name(class_names, k)
        )
        for k in sorted(present)
    ]
    height = fig.get_figheight()
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=max(1, min(len(handles), _LEGEND_COLUMNS)),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1))
    return fig
