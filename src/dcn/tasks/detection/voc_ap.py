"""PASCAL VOC detection average precision (AP) and its class mean (mAP), at several IoU thresholds.

Computed as the VOC devkit (``VOCevaldet.m``) and py-faster-rcnn's ``voc_eval.py`` do, per class
``c`` and IoU threshold ``t``, over a whole split:

1. ``npos`` = the number of ground-truth (GT) boxes of class ``c`` not marked *difficult*.
2. All detections of class ``c`` (from every image) are sorted by score, highest first. The sort is
   stable: detections with equal scores keep their input order (the order of ``update`` calls, then
   the order within an image). The devkit's MATLAB ``sort`` is stable too; py-faster-rcnn's
   ``np.argsort`` is not, so it may break ties differently.
3. Each detection, in that order, is compared with the GT boxes of class ``c`` *in its own image* and
   takes the one of highest IoU; among equal IoUs the first one listed wins (the devkit keeps a GT
   only on a strict ``ov > ovmax``, ``voc_eval.py``'s ``np.argmax`` returns the first maximum), which
   matters when a tie pairs a difficult with a normal GT. If that IoU is ``>= t`` (the
   official devkit's ``ovmax >= minoverlap``; py-faster-rcnn uses ``>``):

   - the GT is difficult: the detection is ignored (neither a true nor a false positive);
   - the GT is not matched yet: true positive (TP), and the GT becomes matched;
   - the GT is already matched: false positive (FP, a duplicate), even when another, unmatched GT
     of the image also overlaps the detection by ``>= t``.

   Otherwise (best IoU ``< t``, or no GT of class ``c`` in the image) it is a false positive.
4. ``recall = cumsum(TP) / npos``, ``precision = cumsum(TP) / max(cumsum(TP) + cumsum(FP), eps)``,
   and AP is :func:`average_precision` of these curves.

Special cases: a class with ``npos == 0`` (no non-difficult GT anywhere) has no defined AP (the
devkit would divide by zero): it is NaN and left out of the mean. A class with GT but no detection
has AP 0. Class index 0 is the background: never evaluated (its AP is NaN), whatever it contains.

Box convention: boxes are float ``xyxy`` in *continuous* pixel coordinates. VOC annotates
1-based, inclusive integer pixel indices; dcn's loader turns a VOC box ``(x1, y1, x2, y2)`` into
``(x1 - 1, y1 - 1, x2, y2)``. IoU is therefore the plain continuous one, ``inter / (area_a + area_b
- inter)`` with ``area = (x2 - x1) * (y2 - y1)`` and no "+1" in any width; on the converted boxes this
equals the devkit's "+1" IoU on the original inclusive boxes. Boxes that only touch (zero-area
intersection) have IoU 0, as in the devkit (which only computes an overlap when ``iw > 0 and ih > 0``).

Interpolation: all-point (VOC 2010 onwards, the default) or 11-point (VOC 2007, ``use_07_metric``).
The 11 recall levels are exactly ``k / 10`` (k = 0..10, each the double nearest to it). py-faster-rcnn
uses ``np.arange(0, 1.1, 0.1)``, whose 0.3, 0.6 and 0.7 are one ulp above those values, and MATLAB's
``0:0.1:1`` has the same 0.3: a recall of exactly 3/10 (6/10, 7/10) reaches the level here but not
there. Only such exact ties differ.

Inputs follow torchvision's detection dicts. Per image, detections: ``{"boxes": Tensor[D, 4],
"scores": Tensor[D], "labels": Tensor[D] int64}``; ground truth: ``{"boxes": Tensor[G, 4], "labels":
Tensor[G] int64, "difficult": Tensor[G] bool}`` (``difficult`` optional, missing = all False). Extra
keys are ignored. Labels are class indices in ``[0, num_classes)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat, rank_zero_warn

__all__ = ["VOCAPResult", "VOCMeanAP", "average_precision", "format_ap_table", "voc_ap_per_class"]

# Column layout of the packed per-box arrays (float64; labels and ids are exact integers in float64).
# Detections: x1, y1, x2, y2, score, label, image id.
# Ground truth: x1, y1, x2, y2, label, difficult, image id.
_DET_SCORE, _DET_LABEL, _DET_IMAGE = 4, 5, 6
_GT_LABEL, _GT_DIFFICULT, _GT_IMAGE = 4, 5, 6
_COLUMNS = 7
# Image ids stored by VOCMeanAP: rank * 2**32 + a per-process counter, exact in float64 for rank < 2**21.
_RANK_STRIDE = 2**32


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP of a precision/recall curve (``recall`` and ``precision`` ``[N]``, in detection order).

    All-point (VOC 2010+): make precision non-increasing from the right (each point takes the best
    precision at any higher recall), then sum ``(recall_i - recall_{i-1}) * precision_i`` over the
    points where recall changes, starting from recall 0. 11-point (VOC 2007): the mean over recall
    levels ``t = 0, 0.1, ..., 1`` of the highest precision at ``recall >= t`` (0 where none).
    Empty curves give 0.
    """
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if rec.ndim != 1 or rec.shape != prec.shape:
        raise ValueError(
            f"recall and precision must be 1-D arrays of one length, got shapes {rec.shape} and {prec.shape}"
        )
    if use_07_metric:
        ap = 0.0
        for k in range(11):
            reached = rec >= k / 10  # k / 10, not k * 0.1: see the module docstring
            ap += (prec[reached].max() if reached.any() else 0.0) / 11
        return float(ap)
    # Sentinels as in the devkit: recall runs from 0 to 1, precision ends at 0.
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[changes] - mrec[changes - 1]) * mpre[changes]))


@dataclass
class VOCAPResult:
    """AP per IoU threshold and class.

    ``ap``: float64 ``[T, K]`` (T thresholds, K classes), NaN where undefined (background, classes
    without non-difficult GT). ``num_positives``: int64 ``[K]``, non-difficult GT boxes per class.
    """

    ap: np.ndarray
    num_positives: np.ndarray
    iou_thresholds: Tuple[float, ...]

    def mean_ap(self) -> np.ndarray:
        """float64 ``[T]``: the mean AP over the classes where it is defined (NaN when none is)."""
        valid = ~np.isnan(self.ap)
        counts = valid.sum(axis=1)
        sums = np.where(valid, self.ap, 0.0).sum(axis=1)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def voc_ap_per_class(
    detections: Sequence[Mapping[str, Tensor]],
    ground_truths: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    use_07_metric: bool = False,
) -> VOCAPResult:
    """VOC AP of per-image detections against per-image ground truth (one dict per image, see the
    module docstring; ``detections[i]`` and ``ground_truths[i]`` describe the same image).
    ``num_classes`` counts the background (index 0)."""
    _check_arguments(num_classes, iou_thresholds)
    dets, gts = _pack_images(detections, ground_truths, num_classes, first_image=0)
    return _evaluate(dets.numpy(), gts.numpy(), num_classes, tuple(iou_thresholds), use_07_metric)


class VOCMeanAP(Metric):
    """VOC mAP over a split, accumulated image by image (see the module docstring for the rules).

    ``update(preds, target)``: lists of per-image dicts in torchvision's detection forms, ``preds[i]``
    the detections of the image whose ground truth is ``target[i]``.

    ``compute()`` returns ``"mAP"`` (the mean AP at the first threshold), ``"mAP<round(100 t)>"`` for
    each threshold ``t`` (``mAP50``, ``mAP70``), ``"ap"`` float64 ``Tensor[T, num_classes]`` (NaN where
    undefined; column 0, the background, is always NaN) and ``"num_positives"`` int64
    ``Tensor[num_classes]``. When no class has a defined AP (e.g. nothing was updated) the mAP keys
    are 0.0, with a warning: a NaN monitor value would break checkpoint selection and early stopping.

    Distributed use: each process stores every box in two ``cat``-reduced states, packed with an
    image id (rank * 2**32 + a per-process counter). The counter only increases, also across
    ``reset``, so images never share an id: not across processes after the gather, and not when
    torchmetrics' ``forward`` resets the metric for the batch value and then merges the states. The
    ids are deterministic for a given sequence of calls. After a gather the detections are ordered
    by process, so equal scores may break ties differently from a single-process run. Every process
    must call ``update`` at least once before a synchronised ``compute`` (Lightning's distributed
    sampler gives each one data).

    Args:
        num_classes: classes including the background (index 0).
        iou_thresholds: IoU thresholds in (0, 1]; distinct after rounding to percent (they name keys).
        use_07_metric: 11-point interpolation (VOC 2007) instead of all-point.
        class_names: ``num_classes`` names, index 0 first, for :meth:`table`; None: ``class_<k>``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        iou_thresholds: Sequence[float] = (0.5, 0.7),
        use_07_metric: bool = False,
        class_names: Optional[Sequence[str]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_arguments(num_classes, iou_thresholds)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names must list num_classes={num_classes} names, got {len(class_names)}")
        self.num_classes = num_classes
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.use_07_metric = use_07_metric
        self.class_names = (
            list(class_names) if class_names is not None else [f"class_{k}" for k in range(num_classes)]
        )
        self.add_state("detections", default=[], dist_reduce_fx="cat")
        self.add_state("ground_truths", default=[], dist_reduce_fx="cat")
        self._next_image = 0  # never reset: see the class docstring

    def update(  # type: ignore[override]
        self, preds: List[Mapping[str, Tensor]], target: List[Mapping[str, Tensor]]
    ) -> None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        first_image = rank * _RANK_STRIDE + self._next_image
        dets, gts = _pack_images(preds, target, self.num_classes, first_image=first_image)
        self._next_image += len(preds)
        if self._next_image >= _RANK_STRIDE:
            raise RuntimeError(f"VOCMeanAP: more than {_RANK_STRIDE} images in one process")
        self.detections.append(dets.to(self.device))
        self.ground_truths.append(gts.to(self.device))

    def compute(self) -> Dict[str, Tensor]:  # type: ignore[override]
        dets = _as_packed(self.detections)
        gts = _as_packed(self.ground_truths)
        result = _evaluate(dets, gts, self.num_classes, self.iou_thresholds, self.use_07_metric)
        means = result.mean_ap()
        if np.isnan(means).any():
            rank_zero_warn("VOCMeanAP: no class has a non-difficult ground-truth box; reporting mAP 0.0")
            means = np.nan_to_num(means, nan=0.0)
        out = {"mAP": torch.tensor(means[0], dtype=torch.float64, device=self.device)}
        for t, m in zip(self.iou_thresholds, means):
            out[_map_key(t)] = torch.tensor(m, dtype=torch.float64, device=self.device)
        out["ap"] = torch.from_numpy(result.ap).to(self.device)
        out["num_positives"] = torch.from_numpy(result.num_positives).to(self.device)
        return out

    def table(self, result: Mapping[str, Tensor]) -> str:
        """:func:`format_ap_table` of a :meth:`compute` result with this metric's class names."""
        return format_ap_table(self.class_names, result, self.iou_thresholds)


def format_ap_table(
    class_names: Sequence[str], result: Mapping[str, Any], iou_thresholds: Sequence[float] = (0.5, 0.7)
) -> str:
    """A plain-text table: one row per class (the background, index 0, left out) with its number of
    non-difficult GT boxes and its AP in percent at each threshold (``-`` where undefined), then the
    mean over the defined classes.

    ``result``: a :meth:`VOCMeanAP.compute` dict (``"ap"`` ``[T, K]``, ``"num_positives"`` ``[K]``);
    ``iou_thresholds``: the T thresholds, naming the columns; ``class_names``: K names.
    """
    ap = np.asarray(torch.as_tensor(result["ap"]).cpu(), dtype=np.float64)
    npos = np.asarray(torch.as_tensor(result["num_positives"]).cpu())
    if ap.ndim != 2 or ap.shape[0] != len(iou_thresholds) or ap.shape[1] != len(class_names):
        raise ValueError(
            f"result['ap'] must be [num_thresholds={len(iou_thresholds)}, num_classes={len(class_names)}], "
            f"got {list(ap.shape)}"
        )
    names = list(class_names)[1:]
    width = max([len(n) for n in names] + [len("mean")])
    headers = [f"AP{round(100 * t)}" for t in iou_thresholds]

    def fmt(value: float) -> str:
        return f"{100 * value:7.2f}" if value == value else f"{'-':>7}"

    lines = [f"{'class':<{width}}  {'#GT':>6}  " + "  ".join(f"{h:>7}" for h in headers)]
    for k, name in enumerate(names, start=1):
        lines.append(f"{name:<{width}}  {int(npos[k]):6d}  " + "  ".join(fmt(v) for v in ap[:, k]))
    means = VOCAPResult(ap, npos, tuple(iou_thresholds)).mean_ap()
    lines.append(f"{'mean':<{width}}  {int(npos[1:].sum()):6d}  " + "  ".join(fmt(v) for v in means))
    return "\n".join(lines)


def _map_key(t: float) -> str:
    return f"mAP{round(t * 100)}"


def _check_arguments(num_classes: int, iou_thresholds: Sequence[float]) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and at least one class, got {num_classes}")
    if len(iou_thresholds) == 0 or any(not 0.0 < float(t) <= 1.0 for t in iou_thresholds):
        raise ValueError(
            f"iou_thresholds must be a non-empty list of values in (0, 1], got {list(iou_thresholds)}"
        )
    keys = [_map_key(float(t)) for t in iou_thresholds]
    if len(set(keys)) != len(keys):
        raise ValueError(f"iou_thresholds must differ after rounding to percent (they name keys {keys})")


def _pack_images(
    preds: Sequence[Mapping[str, Tensor]],
    target: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    first_image: int,
) -> Tuple[Tensor, Tensor]:
    """Validate per-image dicts and pack them: detections float64 ``[D, 7]`` (box, score, label,
    image id) and ground truth float64 ``[G, 7]`` (box, label, difficult, image id); image ``i`` gets
    id ``first_image + i``."""
    if not isinstance(preds, (list, tuple)) or not isinstance(target, (list, tuple)):
        raise ValueError(
            "preds and target must be lists with one dict per image, got "
            f"{type(preds).__name__} and {type(target).__name__}"
        )
    if len(preds) != len(target):
        raise ValueError(
            f"preds and target must list the same images, got {len(preds)} and {len(target)} dicts"
        )
    det_rows: List[Tensor] = [torch.zeros(0, _COLUMNS, dtype=torch.float64)]
    gt_rows: List[Tensor] = [torch.zeros(0, _COLUMNS, dtype=torch.float64)]
    for i, (p, g) in enumerate(zip(preds, target)):
        image = float(first_image + i)
        boxes = _boxes(p, f"preds[{i}]")
        scores = _per_box(p, "scores", f"preds[{i}]", len(boxes))
        labels = _labels(p, f"preds[{i}]", len(boxes), num_classes)
        det_rows.append(torch.cat([boxes, scores[:, None], labels[:, None], _column(len(boxes), image)], 1))
        gt_boxes = _boxes(g, f"target[{i}]")
        gt_labels = _labels(g, f"target[{i}]", len(gt_boxes), num_classes)
        if "difficult" in g:
            difficult = _per_box(g, "difficult", f"target[{i}]", len(gt_boxes)).bool().to(torch.float64)
        else:
            difficult = torch.zeros(len(gt_boxes), dtype=torch.float64)
        gt_rows.append(
            torch.cat([gt_boxes, gt_labels[:, None], difficult[:, None], _column(len(gt_boxes), image)], 1)
        )
    return torch.cat(det_rows), torch.cat(gt_rows)


def _column(n: int, value: float) -> Tensor:
    return torch.full((n, 1), value, dtype=torch.float64)


def _boxes(d: Mapping[str, Tensor], where: str) -> Tensor:
    if not isinstance(d, Mapping) or "boxes" not in d:
        raise ValueError(f"{where} must be a dict with 'boxes' (Tensor[N, 4] xyxy), got {type(d).__name__}")
    boxes = torch.as_tensor(d["boxes"])
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}['boxes'] must be Tensor[N, 4] (xyxy), got shape {list(boxes.shape)}")
    return boxes.detach().to("cpu", torch.float64)


def _per_box(d: Mapping[str, Tensor], key: str, where: str, n: int) -> Tensor:
    if key not in d:
        raise ValueError(f"{where} must have '{key}' (Tensor[{n}], one per box)")
    value = torch.as_tensor(d[key])
    if value.shape != (n,):
        raise ValueError(f"{where}['{key}'] must be Tensor[{n}] (one per box), got shape {list(value.shape)}")
    return value.detach().to("cpu", torch.float64)


def _labels(d: Mapping[str, Tensor], where: str, n: int, num_classes: int) -> Tensor:
    labels = _per_box(d, "labels", where, n)
    if n and (labels.min() < 0 or labels.max() >= num_classes or (labels != labels.round()).any()):
        raise ValueError(
            f"{where}['labels'] must be class indices in [0, {num_classes}), got {labels.tolist()}"
        )
    return labels


def _as_packed(state: Any) -> np.ndarray:
    """A list state (or its gathered tensor) as one float64 ``[N, 7]`` array."""
    if isinstance(state, list) and not state:
        return np.zeros((0, _COLUMNS))
    return dim_zero_cat(state).detach().cpu().to(torch.float64).reshape(-1, _COLUMNS).numpy()


def _best_matches(dets: np.ndarray, gts: np.ndarray, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """For each detection, the highest IoU with a GT box of its class in its image (``-inf`` when
    there is none) and that GT's row (the first among equal IoUs; -1 when none). Both ``[D]``.

    Vectorised over all (detection, GT) pairs sharing image and class, which VOC keeps small
    (detections per image x GT boxes of one class in that image)."""
    d, g = len(dets), len(gts)
    best_iou = np.full(d, -np.inf)
    best_gt = np.full(d, -1, dtype=np.int64)
    if d == 0 or g == 0:
        return best_iou, best_gt
    # One integer key per (image, class): image ids renumbered compactly so the key cannot overflow.
    _, image = np.unique(np.concatenate([dets[:, _DET_IMAGE], gts[:, _GT_IMAGE]]), return_inverse=True)
    det_key = image[:d] * num_classes + dets[:, _DET_LABEL].astype(np.int64)
    gt_key = image[d:] * num_classes + gts[:, _GT_LABEL].astype(np.int64)
    gt_order = np.argsort(gt_key, kind="stable")  # stable: GTs of a key stay in input order
    sorted_keys = gt_key[gt_order]
    lo = np.searchsorted(sorted_keys, det_key, side="left")
    counts = np.searchsorted(sorted_keys, det_key, side="right") - lo
    total = int(counts.sum())
    if total == 0:
        return best_iou, best_gt
    # Pairs grouped by detection, each detection's GTs in input order.
    pair_det = np.repeat(np.arange(d), counts)
    starts = np.cumsum(counts) - counts
    pair_gt = gt_order[np.repeat(lo, counts) + np.arange(total) - np.repeat(starts, counts)]
    a, b = dets[pair_det, :4], gts[pair_gt, :4]
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    touching = (iw > 0) & (ih > 0)  # as the devkit: no overlap unless the intersection has area
    inter = np.where(touching, iw * ih, 0.0)
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    iou = np.where(touching, inter / np.where(touching, union, 1.0), 0.0)
    has_pairs = counts > 0
    best_iou[has_pairs] = np.maximum.reduceat(iou, starts[has_pairs])
    # First pair reaching its detection's maximum = the first GT among equal IoUs.
    at_max = np.flatnonzero(iou == best_iou[pair_det])
    dets_at_max, first = np.unique(pair_det[at_max], return_index=True)
    best_gt[dets_at_max] = pair_gt[at_max[first]]
    return best_iou, best_gt


def _evaluate(
    dets: np.ndarray,
    gts: np.ndarray,
    num_classes: int,
    iou_thresholds: Tuple[float, ...],
    use_07_metric: bool,
) -> VOCAPResult:
    """AP of packed detections ``[D, 7]`` against packed ground truth ``[G, 7]`` (module docstring rules)."""
    best_iou, best_gt = _best_matches(dets, gts, num_classes)
    difficult = gts[:, _GT_DIFFICULT] > 0
    det_labels = dets[:, _DET_LABEL].astype(np.int64)
    gt_labels = gts[:, _GT_LABEL].astype(np.int64)
    num_positives = np.bincount(gt_labels[~difficult], minlength=num_classes).astype(np.int64)
    num_positives[0] = 0  # background: never evaluated
    ap = np.full((len(iou_thresholds), num_classes), np.nan)
    for c in range(1, num_classes):
        npos = int(num_positives[c])
        if npos == 0:
            continue  # undefined AP: stays NaN
        rows = np.flatnonzero(det_labels == c)
        order = rows[np.argsort(-dets[rows, _DET_SCORE], kind="stable")]
        ious, matched_gt = best_iou[order], best_gt[order]
        for ti, t in enumerate(iou_thresholds):
            hit = ious >= t
            ignored = hit & difficult[np.where(hit, matched_gt, 0)] if len(gts) else np.zeros_like(hit)
            candidates = np.flatnonzero(hit & ~ignored)
            # A GT's first candidate (in score order) is its TP; later ones are duplicates.
            _, first = np.unique(matched_gt[candidates], return_index=True)
            tp = np.zeros(len(order))
            tp[candidates[first]] = 1.0
            fp = np.where(ignored, 0.0, 1.0 - tp)
            ctp, cfp = np.cumsum(tp), np.cumsum(fp)
            recall = ctp / npos
            precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            ap[ti, c] = average_precision(recall, precision, use_07_metric)
    return VOCAPResult(ap, num_positives, tuple(iou_thresholds))
