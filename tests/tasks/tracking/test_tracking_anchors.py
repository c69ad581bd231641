"""Anchor grid positions and shapes, box coding, and anchor targets on hand-made boxes."""

from __future__ import annotations

import math

import pytest
import torch

from dcn.geometry.boxes import box_iou_pairwise
from dcn.tasks.tracking.anchors import anchor_shapes, make_anchors
from dcn.tasks.tracking.box_coder import decode_boxes, encode_boxes
from dcn.tasks.tracking.targets import IGNORE, NEGATIVE, POSITIVE, TargetOptions, anchor_targets

RATIOS = (0.33, 0.5, 1.0, 2.0, 3.0)


def test_grid_is_stride_8_and_centred_on_the_search_patch():
    anchors = make_anchors(score_size=3, stride=8, search_size=40, ratios=(1.0, 2.0), scales=(8,))
    assert anchors.shape == (2 * 3 * 3, 4)
    grid = anchors.reshape(2, 3, 3, 4)
    # Row i, column j of the 3x3 map sit at 20 + 8 * (j - 1), 20 + 8 * (i - 1).
    for k in range(2):
        for i in range(3):
            for j in range(3):
                assert grid[k, i, j, 0].item() == 12 + 8 * j
                assert grid[k, i, j, 1].item() == 12 + 8 * i
    assert anchors[:, :2].mean(0).tolist() == [20.0, 20.0]


def test_siamrpn_anchor_shapes_keep_the_area_and_set_the_ratio():
    shapes = anchor_shapes(8, RATIOS, (8,))
    assert shapes.shape == (5, 2)
    torch.testing.assert_close(shapes.prod(1), torch.full((5,), 64.0**2))
    torch.testing.assert_close(shapes[:, 1] / shapes[:, 0], torch.tensor(RATIOS))
    torch.testing.assert_close(shapes[2], torch.tensor([64.0, 64.0]))  # ratio 1: the 64x64 square


def test_the_centre_cell_of_an_odd_map_is_the_patch_centre_for_every_type():
    anchors = make_anchors(25, 8, 255, RATIOS, (8,)).reshape(5, 25, 25, 4)
    torch.testing.assert_close(anchors[:, 12, 12, :2], torch.full((5, 2), 127.5))


def test_anchor_arguments_are_checked():
    with pytest.raises(ValueError, match="positive"):
        anchor_shapes(8, (0.0,), (8,))
    with pytest.raises(ValueError, match="empty"):
        anchor_shapes(8, (), (8,))


def test_box_coding_round_trips_and_stays_finite_for_degenerate_boxes():
    anchors = torch.tensor([[10.0, 20.0, 64.0, 32.0], [0.0, 0.0, 8.0, 8.0]])
    boxes = torch.tensor([[12.0, 18.0, 50.0, 40.0], [3.0, -4.0, 16.0, 2.0]])
    deltas = encode_boxes(boxes, anchors)
    torch.testing.assert_close(
        deltas[0], torch.tensor([2 / 64, -2 / 32, math.log(50 / 64), math.log(40 / 32)])
    )
    torch.testing.assert_close(decode_boxes(deltas, anchors), boxes)
    degenerate = torch.tensor([[5.0, 5.0, 0.0, 0.0], [5.0, 5.0, -3.0, 1e-30]])
    assert torch.isfinite(encode_boxes(degenerate, anchors)).all()
    assert torch.isfinite(decode_boxes(torch.full((2, 4), 1e4), anchors)).all()


def _hand_anchors():
    # Three 10x10 anchors: at the box, half overlapping it, and far away.
    return torch.tensor([[50.0, 50.0, 10.0, 10.0], [55.0, 50.0, 10.0, 10.0], [200.0, 200.0, 10.0, 10.0]])


def test_targets_label_by_iou_on_hand_made_boxes():
    box = torch.tensor([[50.0, 50.0, 10.0, 10.0]])
    targets = anchor_targets(_hand_anchors(), box)
    # IoUs: 1 (> 0.6: positive), 1/3 (between 0.3 and 0.6: ignored), 0 (< 0.3: negative).
    assert targets.labels.tolist() == [[POSITIVE, IGNORE, NEGATIVE]]
    torch.testing.assert_close(targets.deltas[0, 0], torch.zeros(4))


def test_negative_pairs_have_only_negatives():
    box = torch.tensor([[50.0, 50.0, 10.0, 10.0]])
    targets = anchor_targets(_hand_anchors(), box, negative=torch.tensor([True]))
    assert targets.labels.tolist() == [[NEGATIVE, NEGATIVE, NEGATIVE]]


def test_targets_draw_at_most_16_positives_and_64_in_all():
    anchors = make_anchors(25, 8, 255, RATIOS, (8,))
    # A box equal to the ratio-1 anchors' size at the centre: many anchors of that type overlap > 0.6
    # only near the centre; a huge box makes many positives to draw from.
    boxes = torch.tensor([[127.5, 127.5, 64.0, 64.0], [127.5, 127.5, 70.0, 70.0], [127.5, 127.5, 64.0, 64.0]])
    negative = torch.tensor([False, False, True])
    generator = torch.Generator().manual_seed(0)
    targets = anchor_targets(anchors, boxes, negative, TargetOptions(num_pos=2, num_total=10), generator)
    labels = targets.labels
    assert (labels == POSITIVE).sum(1).tolist() == [2, 2, 0]
    assert (labels != IGNORE).sum(1).tolist() == [10, 10, 10]
    iou = box_iou_pairwise(boxes, anchors)
    assert (iou[labels == POSITIVE] > 0.6).all()
    assert (iou[:2][labels[:2] == NEGATIVE] < 0.3).all()
    full = anchor_targets(anchors, boxes[:1], options=TargetOptions(), generator=generator).labels
    n_candidates = int((iou[0] > 0.6).sum())
    assert (full == POSITIVE).sum().item() == min(16, n_candidates) and (full != IGNORE).sum().item() == 64


def test_target_options_are_checked():
    with pytest.raises(ValueError, match="neg_iou <= pos_iou"):
        TargetOptions(pos_iou=0.3, neg_iou=0.6)
    with pytest.raises(ValueError, match="num_pos <= num_total"):
        TargetOptions(num_pos=80, num_total=64)
