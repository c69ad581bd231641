"""SiamRPN's geometry, heads and loss."""

from __future__ import annotations

import pytest
import torch

from dcn.backbones import ResNetBackbone
from dcn.tasks.tracking.loss import siamrpn_loss
from dcn.tasks.tracking.model import ResponseGeometry, SiamRPN
from dcn.tasks.tracking.rpn_head import xcorr_depthwise, xcorr_full
from dcn.tasks.tracking.targets import AnchorTargets, anchor_targets


def small_model(head="depthwise", deform=False):
    backbone = ResNetBackbone("resnet18", deform={"enabled": deform, "stages": [2]})
    return SiamRPN(backbone, feature="layer2", template_size=63, search_size=127, head=head, channels=16)


def test_standard_geometry_crops_7x7_templates_and_gives_a_25x25_map():
    geometry = ResponseGeometry(127, 255)
    assert geometry.feature_sizes() == (16, 32)
    assert geometry.template_slice == (5, 12) and geometry.search_slice == (1, 32)
    assert geometry.score_size == 25


def test_sizes_that_would_misalign_the_anchor_grid_are_refused():
    with pytest.raises(ValueError, match="multiple of 2 \\* stride"):
        ResponseGeometry(127, 247)
    with pytest.raises(ValueError, match="too small"):
        ResponseGeometry(31, 127)


def test_feature_index_k_is_centred_on_pixel_k_times_stride():
    """The premise of the geometry: the receptive field of stride-8 feature k (gradient support) is
    symmetric about input pixel 8k, for ResNet-18's dilated layer3 (output stride 8: strided and
    dilated stages both).

    Positive weights and inputs keep every ReLU open, and an average pool of the max-pool's geometry
    passes gradient to its whole window, so the gradient's support is the whole receptive field."""
    net = ResNetBackbone("resnet18", deform=False, output_stride=8).eval()
    net.layer4 = torch.nn.Identity()
    net.maxpool = torch.nn.AvgPool2d(3, 2, 1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.abs_()
    x = torch.ones(1, 3, 223, 223, requires_grad=True)
    k = 14
    net(x)["layer3"][0, :, k, k].sum().backward()
    support = x.grad[0].abs().sum(0).sum(0).nonzero().flatten()
    lo, hi = int(support.min()), int(support.max())
    assert lo > 0 and hi < 222  # not clipped by the image border
    assert (lo + hi) / 2 == 8 * k


@pytest.mark.parametrize("head", ["depthwise", "upchannel"])
def test_heads_give_one_score_and_four_deltas_per_anchor(head):
    model = small_model(head).eval()
    assert model.geometry.score_size == 9 and model.anchors.shape == (5 * 9 * 9, 4)
    cls, loc = model(torch.rand(2, 3, 63, 63), torch.rand(2, 3, 127, 127))
    assert cls.shape == (2, 5, 9, 9) and loc.shape == (2, 20, 9, 9)
    assert not hasattr(model.backbone, "layer3") and not hasattr(model.backbone, "layer4")


def test_model_rejects_wrong_stride_and_wrong_patch_sizes():
    with pytest.raises(ValueError, match="output_stride=8"):
        SiamRPN(ResNetBackbone("resnet18", deform=False), feature="layer4")
    with pytest.raises(ValueError, match="deformable layers"):
        SiamRPN(ResNetBackbone("resnet18", deform={"stages": [4]}, output_stride=8), feature="layer3")
    with pytest.raises(ValueError, match="Tensor\\[B, C, 63, 63\\]"):
        small_model()(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 127, 127))


def test_correlations_match_a_loop():
    search, kernel = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 3, 3)
    out = xcorr_depthwise(search, kernel)
    assert out.shape == (2, 3, 4, 4)
    expected = (search[1, 2, 1:4, 2:5] * kernel[1, 2]).sum()
    torch.testing.assert_close(out[1, 2, 1, 2], expected)
    full = xcorr_full(search, torch.randn(2, 4 * 3, 3, 3))
    assert full.shape == (2, 4, 4, 4)


def test_loss_is_finite_for_any_box_and_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = small_model()
    template, search = torch.rand(2, 3, 63, 63), torch.rand(2, 3, 127, 127)
    # A normal box, and a degenerate one (zero size, far outside) in a negative pair.
    boxes = torch.tensor([[63.5, 63.5, 30.0, 20.0], [-500.0, 1e4, 0.0, 0.0]])
    negative = torch.tensor([False, True])
    targets = anchor_targets(model.anchors, boxes, negative, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        terms = siamrpn_loss(*model(template, search), targets)
        assert all(torch.isfinite(v) for v in terms.values())
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < losses[0]
    torch.testing.assert_close(terms["loss"].detach(), (terms["cls"] + 1.2 * terms["reg"]).detach())


def test_loss_without_positives_or_with_nan_boxes_is_finite():
    cls, loc = torch.randn(1, 5, 3, 3, requires_grad=True), torch.randn(1, 20, 3, 3)
    labels = torch.full((1, 45), -1, dtype=torch.long)
    labels[0, :4] = 0
    deltas = torch.full((1, 45, 4), float("nan"))  # never read: no positive
    terms = siamrpn_loss(cls, loc, AnchorTargets(labels, deltas))
    assert float(terms["reg"]) == 0.0 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert torch.isfinite(cls.grad).all()


def test_tracking_task_refuses_a_classification_datamodule():
    from functools import partial

    from dcn.tasks.tracking import TrackingTask

    backbone = ResNetBackbone("resnet18", deform=False)
    with pytest.raises(ValueError, match="tracking datamodule"):
        TrackingTask(backbone, partial(torch.optim.SGD, lr=0.1), num_classes=10)
