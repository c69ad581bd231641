"""Detection pictures: predicted boxes drawn above the score threshold only; the grid keeps its title."""

from __future__ import annotations

import numpy as np
import torch

from dcn.tasks.detection.visualization import detection_grid, draw_predictions

NAMES = ["background", "disc", "ring"]


def _prediction():
    return {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 44.0, 40.0]]),
            "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.3])}  # fmt: skip


def test_only_boxes_above_the_threshold_are_drawn():
    image = torch.zeros(3, 48, 48)
    picture = draw_predictions(image, _prediction(), NAMES, score_threshold=0.5)
    assert picture.shape == (48, 48, 3) and picture.dtype == np.uint8
    assert picture[4, 4:21].any()  # the edge of the kept box (score 0.9)
    assert not picture[40, 31:44].any() and not picture[31:40, 44].any()  # the box scoring 0.3 is not drawn
    everything = draw_predictions(image, _prediction(), NAMES, score_threshold=0.0)
    assert everything[31:40, 44].any()


def test_grid_has_a_row_per_image_and_the_given_title():
    image = torch.rand(3, 48, 48)
    target = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "labels": torch.tensor([1]),
              "difficult": torch.tensor([False])}  # fmt: skip
    fig = detection_grid([image, image], [target, target], [_prediction(), _prediction()], NAMES, title="epoch 3")
    assert len(fig.axes) == 4
    assert fig._suptitle.get_text() == "epoch 3"
    assert fig.axes[1].get_title() == "predicted, score >= 0.5 (1)"
