"""Confusion-matrix scores against hand-made matrices and a per-pixel reference."""

from __future__ import annotations

import math

import pytest
import torch

from dcn.tasks.segmentation.metrics import SegmentationMetrics, scores_from_confusion


def test_scores_of_a_hand_made_matrix_exclude_the_absent_class():
    # Rows: truth, columns: prediction. Class 2 appears in neither: excluded from every mean.
    confmat = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    s = scores_from_confusion(confmat)
    # IoU_0 = 5 / (5 + 1 + 2), IoU_1 = 3 / (3 + 2 + 1)
    assert s["iou"][0].item() == pytest.approx(5 / 8)
    assert s["iou"][1].item() == pytest.approx(3 / 6)
    assert math.isnan(s["iou"][2].item())
    assert s["mIoU"].item() == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert s["pixel_acc"].item() == pytest.approx(8 / 11)
    assert s["class_acc"][0].item() == pytest.approx(5 / 6)
    assert s["class_acc"][1].item() == pytest.approx(3 / 5)
    assert math.isnan(s["class_acc"][2].item())
    assert s["mean_class_acc"].item() == pytest.approx((5 / 6 + 3 / 5) / 2)


def test_a_class_only_predicted_counts_with_iou_zero():
    # Class 2 has no ground truth but is predicted once: IoU 0 (a false positive), no accuracy.
    confmat = torch.tensor([[4, 0, 1], [0, 2, 0], [0, 0, 0]])
    s = scores_from_confusion(confmat)
    assert s["iou"].tolist()[:2] == pytest.approx([4 / 5, 1.0])
    assert s["iou"][2].item() == 0.0
    assert s["mIoU"].item() == pytest.approx((4 / 5 + 1 + 0) / 3)
    assert math.isnan(s["class_acc"][2].item())
    assert s["mean_class_acc"].item() == pytest.approx((4 / 5 + 1) / 2)


def test_an_empty_matrix_gives_nan_not_an_error():
    s = scores_from_confusion(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(s["mIoU"].item()) and math.isnan(s["pixel_acc"].item())


def test_non_square_matrix_is_rejected():
    with pytest.raises(ValueError, match="square"):
        scores_from_confusion(torch.zeros(2, 3))


def _reference_confusion(preds: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    cm = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(target.flatten().tolist(), preds.flatten().tolist()):
        if t != 255:
            cm[t, p] += 1
    return cm


def test_metric_accumulates_over_batches_and_ignores_255():
    g = torch.Generator().manual_seed(0)
    k = 4
    target = torch.randint(0, k, (3, 9, 11), generator=g)
    target[target == 3] = 2  # class 3 never in the truth ...
    target[:, :2] = 255  # ... and a band of ignored pixels
    preds = torch.randint(0, k - 1, (3, 9, 11), generator=g)  # ... nor predicted: absent
    metric = SegmentationMetrics(k)
    for i in range(3):  # one image at a time: must equal the whole-split matrix
        metric.update(preds[i : i + 1], target[i : i + 1])
    out = metric.compute()
    expected = _reference_confusion(preds, target, k)
    assert torch.equal(out["confmat"], expected)
    assert expected.sum() == (target != 255).sum()
    ref = scores_from_confusion(expected)
    assert out["mIoU"].item() == pytest.approx(ref["mIoU"].item())
    assert math.isnan(out["iou"][3].item())
    # Per-batch averaging would differ from the split-level value; here we check the latter exactly.
    manual = []
    for c in range(3):
        t, p = (target == c), (preds == c) & (target != 255)
        manual.append((t & p).sum().item() / (t | p).sum().item())
    assert out["mIoU"].item() == pytest.approx(sum(manual) / 3)


def test_metric_takes_scores_too():
    target = torch.tensor([[[0, 1], [1, 255]]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[0.0, 1.0], [-1.0, 5.0]])  # argmax: [[0, 1], [0, 1]]
    metric = SegmentationMetrics(2)
    metric.update(logits, target)
    assert metric.compute()["confmat"].tolist() == [[1, 0], [1, 1]]


def test_label_outside_the_classes_raises():
    metric = SegmentationMetrics(3)
    with pytest.raises(RuntimeError, match="3"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 1], [7, 2]]]))
