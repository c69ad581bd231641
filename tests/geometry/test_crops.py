"""Crop geometry: boxes map into patches and back exactly; patches show the image where the maps say."""

from __future__ import annotations

import math

import pytest
import torch

from dcn.geometry.boxes import (
    box_iou_pairwise,
    box_overlap,
    cxcywh_to_xywh,
    polygon_to_xywh,
    xywh_to_cxcywh,
)
from dcn.geometry.crops import CropWindow, context_side, crop_patch, search_window, template_window


def test_box_round_trips_through_crop_and_uncrop():
    box = torch.tensor([[37.25, 81.5, 20.0, 44.0], [-10.0, 300.0, 3.0, 1.5]], dtype=torch.float64)
    window = CropWindow(40.0, 70.0, side=93.7, out_size=127)
    back = window.box_to_image(window.box_to_patch(box))
    torch.testing.assert_close(back, box)


def test_target_lands_at_the_patch_centre_with_the_context_scale():
    box = torch.tensor([100.0, 50.0, 30.0, 10.0])
    window = template_window(box, 127, context=0.5)
    p = 0.5 * (30 + 10)
    assert window.side == pytest.approx(math.sqrt((30 + p) * (10 + p)))
    patch_box = window.box_to_patch(box)
    torch.testing.assert_close(patch_box[:2], torch.tensor([63.5, 63.5]))
    assert float(patch_box[2]) == pytest.approx(30 * 127 / window.side)
    search = search_window(box, 127, 255)
    # Same scale in the template and the search patch: the object keeps its size in pixels.
    assert search.scale == pytest.approx(window.scale)
    torch.testing.assert_close(search.box_to_patch(box)[2:], patch_box[2:])


def test_crop_patch_puts_image_content_where_box_to_patch_says():
    image = torch.zeros(3, 60, 80)
    image[:, 20:30, 50:60] = 1.0  # a 10x10 white square: cxcywh (55, 25, 10, 10)
    square = torch.tensor([55.0, 25.0, 10.0, 10.0])
    window = CropWindow(cx=45.0, cy=30.0, side=40.0, out_size=80)  # 2 patch pixels per image pixel
    patch = crop_patch(image, window, fill=torch.zeros(3))
    x, y, w, h = (round(float(v)) for v in cxcywh_to_xywh(window.box_to_patch(square)))
    assert (x, y, w, h) == (50, 20, 20, 20)  # window origin (25, 10), 2 patch pixels per image pixel
    inside = patch[:, y + 1 : y + h - 1, x + 1 : x + w - 1]
    assert torch.allclose(inside, torch.ones_like(inside))
    patch[:, y - 1 : y + h + 1, x - 1 : x + w + 1] = 0.0  # bilinear blends one pixel around the edge
    assert patch.abs().max() == 0


def test_outside_the_image_is_filled_with_the_fill_value():
    image = torch.rand(3, 20, 20)
    fill = torch.tensor([0.1, 0.2, 0.3])
    window = CropWindow(cx=-50.0, cy=-50.0, side=20.0, out_size=16)  # entirely outside
    patch = crop_patch(image, window, fill)
    torch.testing.assert_close(patch, fill[:, None, None].expand(3, 16, 16))
    default = crop_patch(image, window)  # default fill: the image's mean colour
    torch.testing.assert_close(default[:, 0, 0], image.mean(dim=(1, 2)))


def test_identity_window_reproduces_the_image():
    image = torch.rand(3, 12, 12)
    patch = crop_patch(image, CropWindow(6.0, 6.0, 12.0, 12))
    torch.testing.assert_close(patch, image)


def test_crop_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        context_side(0.0, 5.0)
    with pytest.raises(ValueError, match="Tensor\\[C, H, W\\]"):
        crop_patch(torch.zeros(1, 3, 4, 4), CropWindow(1.0, 1.0, 2.0, 2))
    with pytest.raises(ValueError, match="side"):
        CropWindow(0.0, 0.0, 0.0, 8)


def test_box_formats_and_overlaps():
    xywh = torch.tensor([10.0, 20.0, 30.0, 40.0])
    torch.testing.assert_close(xywh_to_cxcywh(xywh), torch.tensor([25.0, 40.0, 30.0, 40.0]))
    torch.testing.assert_close(cxcywh_to_xywh(xywh_to_cxcywh(xywh)), xywh)
    a = torch.tensor([5.0, 5.0, 10.0, 10.0])  # [0, 10]^2
    b = torch.tensor([10.0, 5.0, 10.0, 10.0])  # [5, 15] x [0, 10]: overlap 50, union 150
    assert float(box_overlap(a, b)) == pytest.approx(1 / 3)
    assert float(box_overlap(a, torch.tensor([5.0, 5.0, 0.0, 0.0]))) == 0.0  # no area: 0, not NaN
    pair = box_iou_pairwise(torch.stack([a, b]), torch.stack([a, b, a]))
    assert pair.shape == (2, 3) and float(pair[1, 1]) == pytest.approx(1.0)


def test_polygon_becomes_its_axis_aligned_bounding_box():
    diamond = torch.tensor([5.0, 0.0, 10.0, 5.0, 5.0, 10.0, 0.0, 5.0])
    torch.testing.assert_close(polygon_to_xywh(diamond), torch.tensor([0.0, 0.0, 10.0, 10.0]))
