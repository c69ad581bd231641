"""Validation pictures: VOC colours, layout of the comparison grid, de-normalisation."""

from __future__ import annotations

import torch

from dcn.tasks.segmentation.visualization import colorize, comparison_grid


def test_colorize_uses_the_voc_palette():
    mask = torch.tensor([[0, 1], [15, 255]])
    rgb = colorize(mask)
    assert rgb.shape == (3, 2, 2) and rgb.dtype == torch.uint8
    assert rgb[:, 0, 1].tolist() == [128, 0, 0]  # aeroplane
    assert rgb[:, 1, 0].tolist() == [192, 128, 128]  # person
    assert rgb[:, 1, 1].tolist() == [224, 224, 192]  # ignore: VOC's cream border colour


def test_comparison_grid_rows_are_image_truth_prediction():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    images = torch.zeros(2, 3, 4, 5)  # normalised 0 -> the mean, 0.5 -> 128
    targets = torch.ones(2, 4, 5, dtype=torch.long)
    preds = torch.full((2, 4, 5), 2)
    grid = comparison_grid(images, targets, preds, mean, std)
    assert grid.shape == (3, 2 * 4, 3 * 5) and grid.dtype == torch.uint8
    assert (grid[:, :, :5] == 128).all()
    assert grid[:, 5, 5:10].T.tolist() == [[128, 0, 0]] * 5  # truth: class 1
    assert grid[:, 5, 10:].T.tolist() == [[0, 128, 0]] * 5  # prediction: class 2
