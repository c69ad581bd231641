"""The detection metrics a run reports, behind one ``update`` / ``compute``.

- ``"voc"``: PASCAL VOC AP per class at each IoU threshold (:class:`~dcn.tasks.detection.voc_ap.VOCMeanAP`;
  difficult objects ignored; all-point interpolation, or VOC2007's 11-point), logged as ``mAP<t>`` per
  IoU threshold t (``mAP50``, ``mAP70``, ...; mean over classes with ground truth).
- ``"coco"``: COCO AP through torchmetrics' ``MeanAveragePrecision`` (pycocotools or
  faster-coco-eval), logged as ``coco/mAP`` (IoU 0.5:0.95), ``coco/mAP50``, ``coco/mAP75``,
  ``coco/mAP_small|medium|large`` and ``coco/mAR100``. Crowd boxes (``iscrowd``; for VOC-style
  targets the ``difficult`` ones) are ignored as COCO does.

``mAP`` is the first kind's headline number: VOC mAP at the first threshold, or COCO mAP@[.5:.95];
the key it stands for is not logged twice (with the defaults: ``mAP`` and ``mAP70``, no ``mAP50``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from dcn.tasks.detection.voc_ap import VOCMeanAP

__all__ = ["METRIC_KINDS", "DetectionMetrics"]

METRIC_KINDS = ("voc", "coco")
_COCO_KEYS = {
    "map": "coco/mAP",
    "map_50": "coco/mAP50",
    "map_75": "coco/mAP75",
    "map_small": "coco/mAP_small",
    "map_medium": "coco/mAP_medium",
    "map_large": "coco/mAP_large",
    "mar_100": "coco/mAR100",
}


class DetectionMetrics(nn.Module):
    """Args:
    num_classes: classes including background.
    kinds: which of ``"voc"`` and ``"coco"`` to compute (the first gives ``mAP``).
    voc_iou_thresholds, voc_use_07_metric: see :class:`VOCMeanAP`.
    coco_backend: ``"pycocotools"`` or ``"faster_coco_eval"``.
    """

    def __init__(
        self,
        num_classes: int,
        kinds: Sequence[str] = ("voc",),
        voc_iou_thresholds: Sequence[float] = (0.5, 0.7),
        voc_use_07_metric: bool = False,
        coco_backend: str = "pycocotools",
    ) -> None:
        super().__init__()
        kinds = list(kinds)
        if not kinds or any(k not in METRIC_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"task.metrics must be distinct names from {list(METRIC_KINDS)}, got {kinds}")
        self.kinds = kinds
        self.voc: Optional[VOCMeanAP] = None
        self.coco = None
        if "voc" in kinds:
            self.voc = VOCMeanAP(
                num_classes, iou_thresholds=voc_iou_thresholds, use_07_metric=voc_use_07_metric
            )
        if "coco" in kinds:
            from torchmetrics.detection import MeanAveragePrecision

            self.coco = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=coco_backend)

    def update(self, predictions: List[Dict[str, Tensor]], targets: List[Dict[str, Tensor]]) -> None:
        """``predictions``: torchvision's eval output (``boxes``, ``scores``, ``labels``); ``targets``:
        the datamodule's (``boxes``, ``labels``, optional ``difficult`` / ``iscrowd``)."""
        if self.voc is not None:
            self.voc.update(predictions, targets)
        if self.coco is not None:
            coco_targets = []
            for t in targets:
                crowd = t.get("iscrowd", t.get("difficult"))
                entry = {"boxes": t["boxes"], "labels": t["labels"]}
                if crowd is not None:
                    entry["iscrowd"] = crowd.to(torch.int64)
                coco_targets.append(entry)
            self.coco.update(
                [{"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"]} for p in predictions],
                coco_targets,
            )

    def compute(self) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Tensor]]]:
        """``(scalars, voc_result)``: the logged numbers (``mAP`` first) and VOCMeanAP's full result
        (per-class ``ap`` and ``num_positives``), None without ``"voc"``."""
        scalars: Dict[str, Tensor] = {}
        voc_result = None
        if self.voc is not None:
            voc_result = self.voc.compute()
            scalars.update({k: v for k, v in voc_result.items() if k.startswith("mAP") and k != "mAP"})
        if self.coco is not None:
            result = self.coco.compute()
            scalars.update({name: result[key].float() for key, name in _COCO_KEYS.items()})
        if self.kinds[0] == "voc":
            headline_key = f"mAP{round(100 * float(self.voc.iou_thresholds[0]))}"
        else:
            headline_key = "coco/mAP"
        headline = scalars.pop(headline_key)  # logged once, as mAP
        return {"mAP": headline.float(), **{k: v.float() for k, v in scalars.items()}}, voc_result

    def reset(self) -> None:
        for metric in (self.voc, self.coco):
            if metric is not None:
                metric.reset()
