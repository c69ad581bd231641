"""VOC AP: hand-computed cases, agreement with a loop-based port of py-faster-rcnn's voc_eval, and
the torchmetrics state handling (batches, forward, reset, a simulated two-process gather)."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from dcn.tasks.detection import voc_ap
from dcn.tasks.detection.voc_ap import VOCMeanAP, average_precision, format_ap_table, voc_ap_per_class

A = [0.0, 0.0, 10.0, 10.0]  # a 10x10 box, area 100
FAR = [20.0, 20.0, 30.0, 30.0]  # overlaps nothing near A


def det(
    boxes: Sequence[Sequence[float]], scores: Sequence[float], labels: Sequence[int]
) -> Dict[str, Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def gt(
    boxes: Sequence[Sequence[float]], labels: Sequence[int], difficult: Sequence[bool] | None = None
) -> Dict[str, Tensor]:
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return out


def ap_of(dets, gts, num_classes=2, thresholds=(0.5, 0.7), use_07=False) -> np.ndarray:
    return voc_ap_per_class(dets, gts, num_classes, thresholds, use_07).ap


# ---------------------------------------------------------------- average_precision


def test_all_point_ap_of_a_hand_curve():
    # Points (recall, precision): (0.5, 1), (0.5, 0.5), (1, 2/3). Envelope from the right:
    # [1, 2/3, 2/3]; recall changes 0 -> 0.5 (precision 1) and 0.5 -> 1 (precision 2/3):
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)


def test_eleven_point_ap_of_a_hand_curve():
    # Same curve. Levels 0..0.5 (6 of them): best precision at recall >= t is 1. Levels 0.6..1
    # (5): only (1, 2/3) qualifies. AP = (6 * 1 + 5 * 2/3) / 11 = 28/33.
    ap = average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), use_07_metric=True)
    assert ap == pytest.approx(28 / 33)


def test_eleven_point_levels_are_exact_tenths():
    # One point at recall 3/10, precision 1: levels 0, 0.1, 0.2, 0.3 are reached -> 4/11. With
    # np.arange(0, 1.1, 0.1) the level 0.30000000000000004 would not be (3/11).
    assert average_precision(np.array([3 / 10]), np.array([1.0]), use_07_metric=True) == pytest.approx(4 / 11)


def test_empty_curve_has_zero_ap_and_bad_shapes_raise():
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0
    assert average_precision(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        average_precision(np.zeros(2), np.zeros(3))


# ---------------------------------------------------------------- single image, hand cases


def test_perfect_detection_has_ap_one():
    ap = ap_of([det([A], [0.9], [1])], [gt([A], [1])])
    assert ap[:, 1].tolist() == [1.0, 1.0]
    assert math.isnan(ap[0, 0]) and math.isnan(ap[1, 0])  # background never evaluated


@pytest.mark.parametrize("use_07", [False, True])
def test_false_positive_ranked_first_halves_ap(use_07):
    # Sorted: FAR (FP, 0.9), A (TP, 0.8). recall [0, 1], precision [0, 1/2]. All-point: one recall
    # step 0 -> 1 at envelope precision 1/2 -> 0.5. 11-point: every level's best precision is 1/2.
    ap = ap_of([det([FAR, A], [0.9, 0.8], [1, 1])], [gt([A], [1])], use_07=use_07)
    assert ap[:, 1] == pytest.approx([0.5, 0.5])


def test_duplicate_is_a_false_positive_even_with_another_overlapping_gt():
    # GT A and B = [0, 0, 10, 8] (IoU(A, B) = 80/100). d1 = A (0.9) -> TP on A. d2 = A (0.8): its best
    # GT is A (IoU 1, B only 0.8), already matched -> FP, although B is free (devkit rule). d3 = B
    # (0.7) -> TP on B. recall [1/2, 1/2, 1], precision [1, 1/2, 2/3] -> 5/6 as in the hand curve above.
    # (Re-matching d2 to B would give recall [1/2, 1, 1], precision [1, 1, 2/3] and AP 1.)
    b = [0.0, 0.0, 10.0, 8.0]
    ap = ap_of([det([A, A, b], [0.9, 0.8, 0.7], [1, 1, 1])], [gt([A, b], [1, 1])], thresholds=(0.5,))
    assert ap[0, 1] == pytest.approx(5 / 6)


def test_detection_on_a_difficult_gt_is_ignored_and_difficult_gt_not_counted():
    # GT: A (normal), FAR (difficult). Sorted dets: FAR (0.9, on the difficult GT -> ignored), A (0.8,
    # TP). npos = 1. tp [0, 1], fp [0, 0]: recall [0, 1], precision [0, 1] -> AP 1. Counting the ignored
    # one as FP would give 0.5; counting the difficult GT in npos would cap recall at 1/2.
    result = voc_ap_per_class([det([FAR, A], [0.9, 0.8], [1, 1])], [gt([A, FAR], [1, 1], [False, True])], 2)
    assert result.ap[:, 1].tolist() == [1.0, 1.0]
    assert result.num_positives.tolist() == [0, 1]


def test_class_with_only_difficult_or_no_gt_is_nan_and_class_without_detections_is_zero():
    # Classes: 1 perfect (AP 1); 2 has GT but no detection (AP 0); 3 is only detected (no GT: NaN);
    # 4 has only a difficult GT (npos 0: NaN). The mean over defined classes is (1 + 0) / 2.
    dets = [det([A, FAR, A], [0.9, 0.8, 0.7], [1, 3, 4])]
    gts = [gt([A, FAR, A], [1, 2, 4], [False, False, True])]
    result = voc_ap_per_class(dets, gts, 5)
    ap = result.ap
    assert ap[:, 1].tolist() == [1.0, 1.0] and ap[:, 2].tolist() == [0.0, 0.0]
    assert np.isnan(ap[:, [0, 3, 4]]).all()
    assert result.mean_ap() == pytest.approx([0.5, 0.5])
    assert result.num_positives.tolist() == [0, 1, 1, 0, 0]


TOP, BOTTOM = [0.0, 0.0, 10.0, 5.0], [0.0, 5.0, 10.0, 10.0]  # halves of A: IoU(A, each) = 50/100


@pytest.mark.parametrize(
    "gt_boxes, gt_labels, difficult, expected",
    [
        # The detection A ties (IoU 0.5 exactly) with a difficult and a normal GT: the devkit's
        # strict `ov > ovmax` (and voc_eval's np.argmax) keeps the first one listed.
        ([TOP, BOTTOM], [1, 1], [True, False], 0.0),  # first = difficult: ignored, the normal GT is missed
        ([BOTTOM, TOP], [1, 1], [False, True], 1.0),  # first = normal: a true positive
        # "First" among the GTs of the detection's class: a GT of another class listed before does not count.
        ([A, TOP, BOTTOM], [2, 1, 1], [False, True, False], 0.0),
        ([A, BOTTOM, TOP], [2, 1, 1], [False, False, True], 1.0),
    ],
)
def test_equal_iou_goes_to_the_first_listed_gt(gt_boxes, gt_labels, difficult, expected):
    ap = ap_of([det([A], [0.9], [1])], [gt(gt_boxes, gt_labels, difficult)], num_classes=3, thresholds=(0.5,))
    assert ap[0, 1] == expected


def test_equal_iou_with_two_free_gts_takes_the_first_then_counts_a_duplicate():
    # Two detections on A, both tying with TOP and BOTTOM (IoU 0.5). The first takes TOP (listed
    # first); the second's best GT is again TOP (first among equals), already matched: a duplicate
    # (FP), although BOTTOM is free. recall [1/2, 1/2], precision [1, 1/2]: AP 1/2. Giving each
    # detection the first *free* GT instead would make both true positives: AP 1.
    ap = ap_of([det([A, A], [0.9, 0.8], [1, 1])], [gt([TOP, BOTTOM], [1, 1])], thresholds=(0.5,))
    assert ap[0, 1] == pytest.approx(0.5)


def test_iou_threshold_separates_an_iou_06_box():
    # [0, 0, 10, 6] inside A: intersection 60, union 100 -> IoU 0.6: TP at 0.5, FP at 0.7 (AP 0:
    # the only detection is false, recall stays 0).
    assert ap_of([det([[0, 0, 10, 6]], [0.9], [1])], [gt([A], [1])])[:, 1].tolist() == [1.0, 0.0]


def test_iou_exactly_at_the_threshold_counts():
    # [0, 0, 10, 5] vs A: IoU 50/100 = 0.5 exactly (representable): TP at 0.5 (devkit's >=).
    assert ap_of([det([[0, 0, 10, 5]], [0.9], [1])], [gt([A], [1])], thresholds=(0.5,))[0, 1] == 1.0


def test_touching_boxes_do_not_overlap():
    # [10, 0, 20, 10] only shares A's edge: no overlap, so at any threshold it is a false positive.
    assert ap_of([det([[10, 0, 20, 10]], [0.9], [1])], [gt([A], [1])], thresholds=(0.01,))[0, 1] == 0.0


def test_images_without_gt_or_detections_and_wrong_class_detections():
    # Image 0: GT A (class 1) and FAR (class 2); dets: class 2 on A (0.95) and class 2 on FAR (0.6).
    # Image 1: no GT, a class-1 det (0.9). Image 2: nothing.
    # Class 1: sorted dets: image-1 det (FP, no GT there) -> recall [0], AP 0 (A is never detected
    #   as class 1: the class-2 det on A does not count).
    # Class 2: sorted: on A (0.95, no class-2 GT overlaps -> FP), on FAR (TP). recall [0, 1],
    #   precision [0, 1/2] -> AP 1/2.
    dets = [det([A, FAR], [0.95, 0.6], [2, 2]), det([A], [0.9], [1]), det([], [], [])]
    gts = [gt([A, FAR], [1, 2]), gt([], []), gt([], [])]
    ap = ap_of(dets, gts, num_classes=3)
    assert ap[:, 1].tolist() == [0.0, 0.0]
    assert ap[:, 2] == pytest.approx([0.5, 0.5])


def test_detection_in_another_image_does_not_match():
    # Image 0: GT A, det A (0.8). Image 1: no GT, det A (0.9). Sorted: image-1 det (FP), image-0 det
    # (TP) -> 0.5. Matching across images would make the first a TP and the second a duplicate: 1.
    ap = ap_of([det([A], [0.8], [1]), det([A], [0.9], [1])], [gt([A], [1]), gt([], [])])
    assert ap[:, 1] == pytest.approx([0.5, 0.5])


def test_equal_scores_keep_input_order():
    # Two dets of score 0.5 in one image: FAR first, then A. Stable order: FP then TP -> AP 0.5.
    # Listed the other way round: TP then FP -> recall [1, 1], precision [1, 1/2] -> AP 1.
    assert ap_of([det([FAR, A], [0.5, 0.5], [1, 1])], [gt([A], [1])])[0, 1] == pytest.approx(0.5)
    assert ap_of([det([A, FAR], [0.5, 0.5], [1, 1])], [gt([A], [1])])[0, 1] == pytest.approx(1.0)


# ---------------------------------------------------------------- reference: py-faster-rcnn voc_eval port


def _reference_ap(rec: np.ndarray, prec: np.ndarray, use_07: bool) -> float:
    """py-faster-rcnn's voc_ap, loops kept; levels k / 10 (see dcn's module docstring)."""
    if use_07:
        ap = 0.0
        for t in [k / 10 for k in range(11)]:
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _reference_voc_eval(dets: List[dict], gts: List[dict], c: int, ovthresh: float, use_07: bool) -> float:
    """py-faster-rcnn's voc_eval for class c, with the devkit's >= , no "+1" and a stable sort."""
    class_recs = {}
    npos = 0
    for img, g in enumerate(gts):
        keep = [i for i in range(len(g["labels"])) if int(g["labels"][i]) == c]
        bbox = np.array([g["boxes"][i].tolist() for i in keep], dtype=np.float64).reshape(-1, 4)
        difficult = np.array([bool(g["difficult"][i]) for i in keep], dtype=bool)
        npos += int(np.sum(~difficult))
        class_recs[img] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(keep)}
    if npos == 0:
        return math.nan
    image_ids, confidence, bbs = [], [], []
    for img, d in enumerate(dets):
        for i in range(len(d["labels"])):
            if int(d["labels"][i]) == c:
                image_ids.append(img)
                confidence.append(float(d["scores"][i]))
                bbs.append(d["boxes"][i].tolist())
    sorted_ind = np.argsort(-np.array(confidence), kind="stable")
    BB = np.array(bbs, dtype=np.float64).reshape(-1, 4)[sorted_ind]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d]
        ovmax = -np.inf
        BBGT = R["bbox"]
        if BBGT.size > 0:
            iw = np.maximum(np.minimum(BBGT[:, 2], bb[2]) - np.maximum(BBGT[:, 0], bb[0]), 0.0)
            ih = np.maximum(np.minimum(BBGT[:, 3], bb[3]) - np.maximum(BBGT[:, 1], bb[1]), 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0]) * (bb[3] - bb[1])
                + (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1])
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax >= ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _reference_ap(rec, prec, use_07)


def random_split(seed: int, num_images: int = 20, num_classes: int = 4):
    """Integer boxes on a 0..40 grid (so IoU ties and equal scores happen), scores in tenths, GT
    about 1 in 5 difficult, detections: jittered GT copies (any class) plus random boxes."""
    rng = np.random.default_rng(seed)

    def boxes(n):
        xy = rng.integers(0, 30, size=(n, 2))
        wh = rng.integers(1, 12, size=(n, 2))
        return np.concatenate([xy, xy + wh], 1).astype(np.float64)

    dets, gts = [], []
    for _ in range(num_images):
        g = int(rng.integers(0, 4))
        g_boxes, g_labels = boxes(g), rng.integers(1, num_classes, size=g)
        gts.append(
            {
                "boxes": torch.from_numpy(g_boxes).float(),
                "labels": torch.from_numpy(g_labels),
                "difficult": torch.from_numpy(rng.random(g) < 0.2),
            }
        )
        jitter = g_boxes + rng.integers(-2, 3, size=g_boxes.shape)
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        keep_label = rng.random(g) < 0.8
        j_labels = np.where(keep_label, g_labels, rng.integers(1, num_classes, size=g))
        r = int(rng.integers(0, 4))
        d_boxes = np.concatenate([jitter, jitter[: g // 2], boxes(r)])  # jitter[: g // 2]: duplicates
        d_labels = np.concatenate([j_labels, j_labels[: g // 2], rng.integers(0, num_classes, size=r)])
        scores = rng.integers(1, 10, size=len(d_boxes)) / 10
        dets.append(
            {
                "boxes": torch.from_numpy(d_boxes).float(),
                "scores": torch.from_numpy(scores).float(),
                "labels": torch.from_numpy(d_labels.astype(np.int64)),
            }
        )
    return dets, gts


@pytest.mark.parametrize("use_07", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_loop_based_voc_eval_port(seed, use_07):
    dets, gts = random_split(seed)
    thresholds = (0.5, 0.7)
    result = voc_ap_per_class(dets, gts, 4, thresholds, use_07)
    for ti, t in enumerate(thresholds):
        for c in range(1, 4):
            expected = _reference_voc_eval(dets, gts, c, t, use_07)
            got = result.ap[ti, c]
            if math.isnan(expected):
                assert math.isnan(got), (t, c)
            else:
                assert got == pytest.approx(expected, abs=1e-12), (t, c)
    # The random data must exercise the interesting branches, or the comparison proves little.
    assert not np.isnan(result.ap[:, 1:]).all()
    assert 0 < np.nanmean(result.ap[:, 1:]) < 1


# ---------------------------------------------------------------- the torchmetrics Metric


def test_metric_keys_shapes_and_values():
    m = VOCMeanAP(num_classes=3, iou_thresholds=(0.5, 0.7))
    # Class 1: IoU-0.6 detection -> AP 1 at 0.5, 0 at 0.7. Class 2: perfect -> 1, 1.
    m.update([det([[0, 0, 10, 6], FAR], [0.9, 0.8], [1, 2])], [gt([A, FAR], [1, 2])])
    out = m.compute()
    assert set(out) == {"mAP", "mAP50", "mAP70", "ap", "num_positives"}
    assert out["ap"].shape == (2, 3) and out["ap"].dtype == torch.float64
    assert out["mAP50"].item() == 1.0 and out["mAP70"].item() == 0.5  # (0 + 1) / 2
    assert out["mAP"].item() == out["mAP50"].item()
    assert out["num_positives"].tolist() == [0, 1, 1]


def test_two_updates_equal_one_and_forward_keeps_images_apart():
    dets, gts = random_split(7, num_images=12)
    once = VOCMeanAP(4)
    once.update(dets, gts)
    twice = VOCMeanAP(4)
    twice.update(dets[:5], gts[:5])
    twice.update(dets[5:], gts[5:])
    via_forward = VOCMeanAP(4)
    via_forward(dets[:5], gts[:5])  # forward resets for the batch value, then merges the states
    via_forward(dets[5:], gts[5:])
    expected = voc_ap_per_class(dets, gts, 4).ap
    for m in (once, twice, via_forward):
        np.testing.assert_array_equal(m.compute()["ap"].numpy(), expected)


@pytest.mark.filterwarnings("ignore:VOCMeanAP. no class")  # batch 2 alone has no GT (forward's batch value)
def test_forward_batches_do_not_share_image_ids():
    # Batch 1: GT A with its detection (0.8); batch 2: one image without GT and a det on A (0.9).
    # Kept apart: FP then TP -> 0.5. If both images got id 0, the second det would take A: AP 1.
    m = VOCMeanAP(2, iou_thresholds=(0.5,))
    m([det([A], [0.8], [1])], [gt([A], [1])])
    m([det([A], [0.9], [1])], [gt([], [])])
    assert m.compute()["mAP"].item() == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # torchmetrics: compute before update
def test_reset_clears_the_states_and_empty_metric_reports_zero():
    m = VOCMeanAP(2)
    m.update([det([A], [0.9], [1])], [gt([A], [1])])
    assert m.compute()["mAP"].item() == 1.0
    m.reset()
    with pytest.warns(UserWarning, match="no class has a non-difficult"):
        out = m.compute()
    assert out["mAP"].item() == 0.0 and out["mAP70"].item() == 0.0
    assert torch.isnan(out["ap"]).all()
    m.update([det([FAR, A], [0.9, 0.8], [1, 1])], [gt([A], [1])])
    assert m.compute()["mAP"].item() == pytest.approx(0.5)


def test_simulated_two_process_gather_keeps_images_apart(monkeypatch):
    # Rank 0 sees GT A with its detection (0.8); rank 1 an image without GT and a det on A (0.9).
    # Each process numbers its first image 0; the rank in the id keeps them apart after the gather:
    # FP then TP -> 0.5 (a collision would give 1).
    rank1 = VOCMeanAP(2, iou_thresholds=(0.5,))
    monkeypatch.setattr(voc_ap.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(voc_ap.dist, "get_rank", lambda: 1)
    rank1.update([det([A], [0.9], [1])], [gt([], [])])
    monkeypatch.setattr(voc_ap.dist, "get_rank", lambda: 0)

    def gather(tensor: Tensor, group=None) -> List[Tensor]:
        # What all_gather returns on rank 0: [rank 0's tensor, rank 1's tensor] for each state.
        other = rank1.detections[0] if tensor is rank0.detections[0] else rank1.ground_truths[0]
        return [tensor, other]

    rank0 = VOCMeanAP(2, iou_thresholds=(0.5,), dist_sync_fn=gather, distributed_available_fn=lambda: True)
    rank0.update([det([A], [0.8], [1])], [gt([A], [1])])
    assert rank0.compute()["mAP"].item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "preds, target, match",
    [
        ([det([A], [0.9], [1])], [], "same images"),
        ({"boxes": torch.zeros(0, 4)}, [gt([A], [1])], "lists with one dict per image"),
        (
            [{"boxes": torch.zeros(1, 5), "scores": torch.ones(1), "labels": torch.ones(1)}],
            [gt([A], [1])],
            r"\[N, 4\]",
        ),
        (
            [{"boxes": torch.zeros(2, 4), "scores": torch.ones(1), "labels": torch.ones(2)}],
            [gt([A], [1])],
            r"\['scores'\] must be Tensor\[2\]",
        ),
        ([{"boxes": torch.zeros(1, 4), "labels": torch.ones(1)}], [gt([A], [1])], "must have 'scores'"),
        ([det([A], [0.9], [1])], [gt([A], [3])], r"class indices in \[0, 2\)"),
        ([det([A], [0.9], [1])], [{"labels": torch.ones(1)}], "must be a dict with 'boxes'"),
    ],
)
def test_bad_inputs_raise(preds, target, match):
    with pytest.raises(ValueError, match=match):
        VOCMeanAP(2).update(preds, target)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="iou_thresholds"):
        VOCMeanAP(2, iou_thresholds=(0.5, 0.501))  # both would be named mAP50
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        VOCMeanAP(2, iou_thresholds=(0.0,))
    with pytest.raises(ValueError, match="class_names"):
        VOCMeanAP(3, class_names=["background", "cat"])


def test_ap_table_lists_classes_counts_and_means():
    m = VOCMeanAP(4, class_names=["background", "cat", "dog", "cow"])
    # cat: IoU 0.6 -> 100 at 0.5, 0 at 0.7; dog: GT without detection -> 0; cow: no GT -> "-".
    m.update([det([[0, 0, 10, 6]], [0.9], [1])], [gt([A, FAR, A], [1, 2, 2])])
    lines = m.table(m.compute()).splitlines()
    assert lines[0].split() == ["class", "#GT", "AP50", "AP70"]
    assert [line.split() for line in lines[1:]] == [
        ["cat", "1", "100.00", "0.00"],
        ["dog", "2", "0.00", "0.00"],
        ["cow", "0", "-", "-"],
        ["mean", "3", "50.00", "0.00"],  # (100 + 0) / 2 and (0 + 0) / 2
    ]
    with pytest.raises(ValueError, match="num_thresholds=1"):
        format_ap_table(["background", "cat", "dog", "cow"], m.compute(), iou_thresholds=(0.5,))
