"""Segmentation scores from a confusion matrix accumulated over a whole split.

``confmat[t, p]`` counts pixels of true class ``t`` predicted as ``p`` (ignored pixels, label 255,
are never counted). With ``TP_c = confmat[c, c]``, ``FN_c`` = the rest of row c, ``FP_c`` = the
rest of column c:

- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; undefined (NaN) for a class absent from both the ground
  truth and the predictions of the split.
- ``mIoU`` = the mean of the defined ``IoU_c``: absent classes are excluded, as the VOC evaluation
  does (counting them as 0 or 1 would reward or punish a class no image contains).
- ``pixel_acc = sum_c TP_c / (number of counted pixels)``.
- ``class_acc_c = TP_c / (TP_c + FN_c)`` (recall), NaN for a class with no ground-truth pixel;
  ``mean_class_acc`` is the mean of the defined ones.

Scores are computed from the matrix summed over the split (not averaged per batch or image), so
they are exact for the split and identical under any batching or number of devices.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from dcn.datamodules.voc.label_png import IGNORE_INDEX

__all__ = ["SegmentationMetrics", "scores_from_confusion"]


def scores_from_confusion(confmat: Tensor) -> Dict[str, Tensor]:
    """Scores of a ``Tensor[K, K]`` confusion matrix (rows: truth, columns: prediction).

    Returns float64 tensors: ``mIoU``, ``pixel_acc``, ``mean_class_acc`` (scalars; NaN if nothing
    was counted) and ``iou``, ``class_acc`` (``Tensor[K]``, NaN where undefined).
    """
    if confmat.dim() != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confmat must be a square Tensor[K, K], got shape {tuple(confmat.shape)}")
    cm = confmat.to(torch.float64)
    tp = cm.diagonal()
    truth = cm.sum(dim=1)  # TP + FN
    predicted = cm.sum(dim=0)  # TP + FP
    union = truth + predicted - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=cm.device)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    class_acc = torch.where(truth > 0, tp / truth.clamp(min=1), nan)
    total = cm.sum()
    return {
        "mIoU": iou.nanmean(),  # NaN when no class is defined (nothing counted)
        "pixel_acc": tp.sum() / total if total > 0 else nan,
        "mean_class_acc": class_acc.nanmean(),
        "iou": iou,
        "class_acc": class_acc,
    }


class SegmentationMetrics(MulticlassConfusionMatrix):
    """torchmetrics' multiclass confusion matrix (pixels labelled 255 ignored) whose ``compute()``
    returns :func:`scores_from_confusion` of the accumulated matrix plus the matrix itself
    (``"confmat"``, int64 ``Tensor[K, K]``).

    ``update(preds, target)``: ``preds`` Tensor[B, H, W] class indices or Tensor[B, K, H, W] scores,
    ``target`` Tensor[B, H, W] int64 in ``[0, K)`` or 255. Labels outside that range raise (torchmetrics
    validates them). The matrix state is summed across devices under DDP.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, normalize=None, **kwargs)

    def compute(self) -> Dict[str, Tensor]:  # type: ignore[override]
        confmat = super().compute()
        return {**scores_from_confusion(confmat), "confmat": confmat}
