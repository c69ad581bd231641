"""Validation pictures for detection: each image twice, with its true boxes (left) and the
predicted boxes above a score threshold (right), labelled with class names (and scores). Labels are
dark text on a box filled with the box's colour, inside the box's top-left corner, so they read on
any image (torchvision >= 0.23: ``draw_bounding_boxes(fill_labels=True)``).

Drawn by :meth:`DetectionTask.validation_picture` for the ValidationPictures callback, and by
``python -m dcn.detect``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

__all__ = ["class_name", "detection_grid", "draw_predictions"]

_TRUE_COLOUR = (40, 200, 60)
_PRED_COLOUR = (230, 40, 40)
_DIFFICULT_COLOUR = (240, 200, 40)
_LABEL_TEXT_COLOUR = (0, 0, 0)  # on the three box colours above, black reads best (contrast >= 4.5)


def _uint8(image: Tensor) -> Tensor:
    return (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu()


def _draw(image: Tensor, boxes: Tensor, labels: List[str], colours: List[tuple]) -> np.ndarray:
    if len(boxes):
        image = draw_bounding_boxes(
            image,
            boxes.detach().float().cpu(),
            labels=labels,
            colors=colours,
            width=2,
            fill_labels=True,
            label_colors=_LABEL_TEXT_COLOUR,
        )
    return image.permute(1, 2, 0).numpy()


def class_name(class_names: Sequence[str], label: int) -> str:
    """``class_names[label]``, or the label as text when the list does not name it."""
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def draw_predictions(
    image: Tensor, prediction: Dict[str, Tensor], class_names: Sequence[str], score_threshold: float = 0.5
) -> np.ndarray:
    """``image`` (Tensor[3, H, W] in [0, 1]) with the predicted boxes scoring at least
    ``score_threshold`` drawn in red, labelled "<class> <score>" in black on red: uint8 array[H, W, 3]."""
    keep = prediction["scores"] >= score_threshold
    labels = prediction["labels"][keep].tolist()
    scores = prediction["scores"][keep].tolist()
    return _draw(
        _uint8(image),
        prediction["boxes"][keep],
        [f"{class_name(class_names, int(k))} {s:.2f}" for k, s in zip(labels, scores)],
        [_PRED_COLOUR] * len(labels),
    )


def detection_grid(
    images: Sequence[Tensor],
    targets: Sequence[Dict[str, Tensor]],
    predictions: Sequence[Dict[str, Tensor]],
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    title: str = "",
):
    """A matplotlib figure, one row per image: truth | predictions.

    Args:
        images: Tensor[3, H_i, W_i] in [0, 1] (the datamodule's unnormalised form).
        targets: ``boxes`` Tensor[K, 4] xyxy, ``labels`` Tensor[K], optional ``difficult`` Tensor[K]
            (drawn in yellow).
        predictions: ``boxes`` Tensor[D, 4], ``labels`` Tensor[D], ``scores`` Tensor[D]; those
            scoring at least ``score_threshold`` are drawn.
        class_names: names indexed by label.
        title: a title above the grid.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(images)
    fig, axes = plt.subplots(rows, 2, figsize=(6, 3 * rows), squeeze=False)
    for row, (image, target, pred) in enumerate(zip(images, targets, predictions)):
        pixels = _uint8(image)
        difficult = target.get("difficult", torch.zeros(len(target["boxes"]), dtype=torch.bool)).tolist()
        truth = _draw(
            pixels,
            target["boxes"],
            [class_name(class_names, int(k)) for k in target["labels"].tolist()],
            [_DIFFICULT_COLOUR if d else _TRUE_COLOUR for d in difficult],
        )
        shown = draw_predictions(image, pred, class_names, score_threshold)
        kept = int((pred["scores"] >= score_threshold).sum())
        for ax, picture, caption in (
            (axes[row, 0], truth, f"truth ({len(target['boxes'])})"),
            (axes[row, 1], shown, f"predicted, score >= {score_threshold:g} ({kept})"),
        ):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(caption, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
