"""Pixel cross-entropy with ignored pixels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcn.tasks.segmentation import segmentation_cross_entropy


def test_equals_mean_over_counted_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)  # PyTorch's mean over non-ignored
    torch.testing.assert_close(segmentation_cross_entropy(logits, target), expected)
    per_pixel = F.cross_entropy(logits, target.clamp(max=3), reduction="none")
    torch.testing.assert_close(expected, per_pixel[target != 255].mean())


def test_all_ignored_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = segmentation_cross_entropy(logits, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="Tensor\\[B, H, W\\]"):
        segmentation_cross_entropy(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
