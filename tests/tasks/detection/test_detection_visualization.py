"""Detection pictures: predicted boxes drawn above the score threshold only; labels on a filled box; the grid
keeps its title."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dcn.tasks.detection.visualization import _PRED_COLOUR, _TRUE_COLOUR, detection_grid, draw_predictions

NAMES = ["background", "disc", "ring"]


def _prediction():
    return {
        "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 44.0, 40.0]]),
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.9, 0.3]),
    }


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
    target = {
        "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]),
        "labels": torch.tensor([1]),
        "difficult": torch.tensor([False]),
    }
    fig = detection_grid(
        [image, image], [target, target], [_prediction(), _prediction()], NAMES, title="epoch 3"
    )
    assert len(fig.axes) == 4
    assert fig._suptitle.get_text() == "epoch 3"
    assert fig.axes[1].get_title() == "predicted, score >= 0.5 (1)"


def _label_box(picture: np.ndarray, colour) -> np.ndarray:
    """The part of ``picture`` inside the box [4, 4, 44, 40] (outline excluded) spanned by ``colour``."""
    inner = picture[7:38, 7:42]
    ys, xs = np.nonzero((inner == colour).all(-1))
    return inner[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@pytest.mark.parametrize("background", [0.0, 1.0])
def test_labels_are_dark_text_on_a_box_of_the_box_colour(background):
    """Readable on a black and on a white image: a filled label box, with dark text in it."""
    image = torch.full((3, 48, 48), background)
    prediction = {
        "boxes": torch.tensor([[4.0, 4.0, 44.0, 40.0]]),
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.9]),
    }
    target = {"boxes": prediction["boxes"], "labels": torch.tensor([2]), "difficult": torch.tensor([False])}
    picture = draw_predictions(image, prediction, NAMES)
    fig = detection_grid([image], [target], [prediction], NAMES)
    truth = np.asarray(fig.axes[0].images[0].get_array())
    plt.close(fig)
    for drawn, colour in ((picture, _PRED_COLOUR), (truth, _TRUE_COLOUR)):
        label = _label_box(drawn, colour)
        filled = (label == colour).all(-1)
        assert label.shape[0] >= 8 and label.shape[1] >= 15  # a box around a line of text, not a few strokes
        assert filled.mean() > 0.5  # filled; text strokes alone cover far less of their bounding box
        assert (label.astype(int).sum(-1) < 200).any()  # the text: dark, on either image
