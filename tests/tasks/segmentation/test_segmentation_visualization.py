"""Validation pictures: VOC colours, layout of the comparison grid (headers, legend), de-normalisation, and
the task passing its class names."""

from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dcn.backbones import ResNetBackbone
from dcn.datamodules.voc.label_png import voc_palette
from dcn.tasks.segmentation import SegmentationTask
from dcn.tasks.segmentation.visualization import colorize, comparison_grid


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _shown(fig) -> list:
    """The pixels each axis shows, row by row: [image, truth, prediction, image, ...]."""
    return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]


def _legend(fig):
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()], np.array(
        [h.get_facecolor()[:3] for h in legend.legend_handles]
    )


def test_colorize_uses_the_voc_palette():
    mask = torch.tensor([[0, 1], [15, 255]])
    rgb = colorize(mask)
    assert rgb.shape == (3, 2, 2) and rgb.dtype == torch.uint8
    assert rgb[:, 0, 1].tolist() == [128, 0, 0]  # aeroplane
    assert rgb[:, 1, 0].tolist() == [192, 128, 128]  # person
    assert rgb[:, 1, 1].tolist() == [224, 224, 192]  # ignore: VOC's cream border colour


def test_comparison_grid_rows_are_image_truth_prediction_under_headers():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    images = torch.zeros(2, 3, 4, 5)  # normalised 0 -> the mean, 0.5 -> 128
    targets = torch.ones(2, 4, 5, dtype=torch.long)
    preds = torch.full((2, 4, 5), 2)
    fig = comparison_grid(
        images, targets, preds, mean, std, class_names=["background", "aeroplane", "bicycle"]
    )
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "truth", "prediction"]
    assert [ax.get_title() for ax in fig.axes[3:]] == ["", "", ""]  # headers once, on top
    shown = _shown(fig)
    assert len(shown) == 6 and all(s.shape == (4, 5, 3) and s.dtype == np.uint8 for s in shown)
    assert (shown[3] == 128).all()
    assert shown[4].reshape(-1, 3).tolist() == [[128, 0, 0]] * 20  # truth: class 1
    assert shown[5].reshape(-1, 3).tolist() == [[0, 128, 0]] * 20  # prediction: class 2


def test_legend_names_the_colours_that_occur():
    targets = [torch.tensor([[0, 1], [1, 255]]), torch.tensor([[0, 0, 0]])]
    preds = [torch.tensor([[0, 1], [4, 4]]), torch.tensor([[0, 1, 1]])]
    images = [torch.rand(3, 2, 2), torch.rand(3, 1, 3)]  # different sizes: one row each
    fig = comparison_grid(images, targets, preds, class_names=["background", "aeroplane", "bicycle"])
    names, colours = _legend(fig)
    # Class 2 occurs nowhere: not listed; class 4 has no name; 255 is the ignored border.
    assert names == ["background", "aeroplane", "class 4", "ignored"]
    np.testing.assert_allclose(colours, voc_palette()[[0, 1, 4, 255]] / 255.0)
    assert [s.shape[:2] for s in _shown(fig)] == [(2, 2)] * 3 + [(1, 3)] * 3


def test_validation_picture_names_the_tasks_classes():
    backbone = ResNetBackbone("resnet18", output_stride=16, deform={"enabled": False})
    task = SegmentationTask(
        backbone,
        num_classes=3,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01),
        aspp_channels=8,
        decoder_channels=8,
        low_level_channels=4,
        class_names=["sky", "road", "car"],
    ).eval()
    items = [
        (torch.rand(3, 32, 32), torch.zeros(32, 32, dtype=torch.long)),
        (torch.rand(3, 32, 48), torch.tensor([0, 1, 2]).repeat(32, 16)),
    ]
    with torch.no_grad():
        fig = task.validation_picture(items)
    names, _ = _legend(fig)
    assert names[:3] == ["sky", "road", "car"]  # every class is in the second truth mask
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "truth", "prediction"]
    shown = _shown(fig)
    with torch.no_grad():
        pred = task(items[1][0][None]).argmax(1)[0]
    assert (shown[5] == colorize(pred).permute(1, 2, 0).numpy()).all()  # the model's own prediction
