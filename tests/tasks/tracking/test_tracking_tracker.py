"""The tracker's post-processing, fed response maps computed from the true box instead of a network."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dcn.geometry.boxes import box_iou_pairwise, box_overlap, xywh_to_cxcywh
from dcn.geometry.crops import CropWindow
from dcn.tasks.tracking.anchors import make_anchors
from dcn.tasks.tracking.box_coder import encode_boxes
from dcn.tasks.tracking.model import ResponseGeometry
from dcn.tasks.tracking.tracker import SiamRPNTracker, TrackerOptions, cosine_window, select_box

RATIOS = (0.33, 0.5, 1.0, 2.0, 3.0)


class OracleTracker(SiamRPNTracker):
    """A SiamRPN tracker whose 'network' knows the true box of the current frame: the score of an anchor is
    its IoU with the truth (as seen in the search patch) and its deltas point exactly at the truth."""

    def __init__(self, truth_xywh, options=TrackerOptions()):
        geometry = ResponseGeometry(127, 255)
        anchors = make_anchors(geometry.score_size, 8, 255, RATIOS, (8,))
        super().__init__(SimpleNamespace(geometry=geometry, anchors=anchors, num_anchors=5), options)
        self.truth = xywh_to_cxcywh(truth_xywh)
        self.t = 0

    def embed_template(self, patch):
        return None

    def predict(self, patch, window: CropWindow):
        self.t += 1
        box = window.box_to_patch(self.truth[self.t])
        scores = box_iou_pairwise(box[None], self.anchors)[0]
        return scores, encode_boxes(box[None], self.anchors)


def translating_square(num_frames=40, size=24.0, step=(3.0, 2.0)):
    frames = torch.full((num_frames, 3, 160, 200), 0.2)
    boxes = []
    for t in range(num_frames):
        x, y = 20 + step[0] * t, 30 + step[1] * t
        frames[t, :, int(y) : int(y + size), int(x) : int(x + size)] = 0.9
        boxes.append([x, y, size, size])
    return frames, torch.tensor(boxes)


def test_oracle_maps_make_the_tracker_follow_a_translating_square():
    frames, boxes = translating_square()
    tracker = OracleTracker(boxes)
    tracker.init(frames[0], boxes[0])
    overlaps = []
    for t in range(1, len(frames)):
        predicted = tracker.update(frames[t])
        overlaps.append(float(box_overlap(xywh_to_cxcywh(predicted), xywh_to_cxcywh(boxes[t]))))
    assert min(overlaps) > 0.9


def test_window_and_penalty_pick_the_proposal_they_should():
    window = cosine_window(3, 1)
    assert window.shape == (9,) and int(window.argmax()) == 4 and window[4] == 1.0
    boxes = torch.tensor([[8.0, 8.0, 20.0, 20.0]] * 9)
    scores = torch.full((9,), 0.5)
    # Equal scores and shapes: the window prefers the centre cell.
    assert select_box(scores, boxes, (20.0, 20.0), window, TrackerOptions())[0] == 4
    # A far stronger off-centre score wins against the window...
    scores[0] = 1.0
    scores[4] = 0.1
    assert select_box(scores, boxes, (20.0, 20.0), window, TrackerOptions(window_influence=0.3))[0] == 0
    # ...unless its box changes size and shape a lot and the penalty is strong.
    boxes[0] = torch.tensor([8.0, 8.0, 80.0, 5.0])
    assert (
        select_box(scores, boxes, (20.0, 20.0), window, TrackerOptions(window_influence=0.3, penalty_k=0.5))[
            0
        ]
        != 0
    )


def test_size_smoothing_rate_is_penalty_times_score_times_size_lr():
    window = torch.ones(1)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    options = TrackerOptions(penalty_k=0.0, size_lr=0.3)
    _, _, lr = select_box(torch.tensor([1.0]), boxes, (20.0, 20.0), window, options)
    assert float(lr) == pytest.approx(0.3)  # no penalty, score 1: lr = size_lr
    # Doubling the size doubles the padded size (s_c = 2, r_c = 1): penalty exp(-k (2 - 1)).
    options = TrackerOptions(penalty_k=0.1, size_lr=0.3)
    _, _, lr = select_box(torch.tensor([0.5]), boxes, (20.0, 20.0), window, options)
    assert float(lr) == pytest.approx(math.exp(-0.1) * 0.5 * 0.3, rel=1e-5)


def test_tracker_options_are_checked():
    with pytest.raises(ValueError, match="window_influence"):
        TrackerOptions(window_influence=1.5)


class GridOracleTracker(OracleTracker):
    """As OracleTracker, but the deltas only fix the size: the centre must come from the chosen anchor's
    grid position, so a misplaced grid or a tracker that always picks one cell loses the square."""

    def predict(self, patch, window):
        scores, deltas = super().predict(patch, window)
        deltas[:, :2] = 0
        return scores, deltas


@pytest.mark.parametrize("window_influence", [0.0, 0.44])
def test_anchor_positions_alone_follow_a_translating_square(window_influence):
    frames, boxes = translating_square()
    tracker = GridOracleTracker(boxes, TrackerOptions(window_influence=window_influence))
    tracker.init(frames[0], boxes[0])
    errors = []
    for t in range(1, len(frames)):
        predicted = xywh_to_cxcywh(tracker.update(frames[t]))
        errors.append(float((predicted[:2] - xywh_to_cxcywh(boxes[t])[:2]).abs().max()))
    # Cells are 8 patch pixels = 8 / scale image pixels apart. Without the window the best-scoring anchor
    # is the nearest (at most half a cell off along each axis); the window may pull it one cell inwards.
    cell = 8 / (127 / 48)  # a 24 px square with context 0.5 gives a 48 px template window
    assert max(errors) <= (0.5 if window_influence == 0 else 1.0) * cell + 1e-4
