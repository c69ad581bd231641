"""SiamRPN's geometry, heads and loss."""

from __future__ import annotations

import pytest
import torch

from dcn.backbones import ResNetBackbone
from dcn.tasks.tracking.loss import siamrpn_loss
from dcn.tasks.tracking.model import ResponseGeometry, SiamRPN
from dcn.tasks.tracking.rpn_head import UpChannelRPNHead, xcorr_depthwise, xcorr_full
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


def _xcorr_depthwise_loop(search, kernel):
    """out[b, c, i, j] = sum_{u, v} search[b, c, i + u, j + v] * kernel[b, c, u, v], element by element."""
    (b_, c_, h, w), (kh, kw) = search.shape, kernel.shape[2:]
    out = torch.empty(b_, c_, h - kh + 1, w - kw + 1, dtype=search.dtype)
    for b in range(b_):
        for c in range(c_):
            for i in range(h - kh + 1):
                for j in range(w - kw + 1):
                    out[b, c, i, j] = (search[b, c, i : i + kh, j : j + kw] * kernel[b, c]).sum()
    return out


def _xcorr_full_loop(search, kernel):
    """out[b, o, i, j] = sum_{c, u, v} search[b, c, i + u, j + v] * kernel[b, o * C + c, u, v]: output o
    of sample b correlates all C search channels with that sample's kernel channels o*C .. o*C + C - 1
    (SiamRPN's layout: the template conv's channels grouped by output), element by element."""
    (b_, c_, h, w), (kh, kw) = search.shape, kernel.shape[2:]
    o_ = kernel.shape[1] // c_
    out = torch.empty(b_, o_, h - kh + 1, w - kw + 1, dtype=search.dtype)
    for b in range(b_):
        for o in range(o_):
            for i in range(h - kh + 1):
                for j in range(w - kw + 1):
                    out[b, o, i, j] = (
                        search[b, :, i : i + kh, j : j + kw] * kernel[b, o * c_ : (o + 1) * c_]
                    ).sum()
    return out


def test_correlations_match_a_loop_on_every_element():
    # float64, a non-square search and kernel (a transposed or flipped kernel differs), and samples
    # with their own kernels (mixing samples differs).
    g = torch.Generator().manual_seed(0)
    search = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    kernel = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    depthwise = xcorr_depthwise(search, kernel)
    assert depthwise.shape == (2, 3, 5, 5)
    torch.testing.assert_close(depthwise, _xcorr_depthwise_loop(search, kernel), rtol=1e-12, atol=1e-12)

    kernels = torch.randn(2, 4 * 3, 2, 3, generator=g, dtype=torch.float64)  # O = 4 outputs
    full = xcorr_full(search, kernels)
    assert full.shape == (2, 4, 5, 5)
    torch.testing.assert_close(full, _xcorr_full_loop(search, kernels), rtol=1e-12, atol=1e-12)


def test_correlations_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="differ in batch or channels"):
        xcorr_depthwise(torch.randn(2, 3, 6, 6), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="O \\* 3"):
        xcorr_full(torch.randn(2, 3, 6, 6), torch.randn(2, 4, 3, 3))


def test_upchannel_head_is_the_full_correlation_of_its_convolutions():
    # The head wires the template convs' O*C channels into xcorr_full: its outputs, built here from
    # its own convolutions and the loop, pin which channels correlate with what.
    head = UpChannelRPNHead(num_anchors=2, in_channels=3).double().eval()
    g = torch.Generator().manual_seed(1)
    template = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    search = torch.randn(2, 3, 9, 9, generator=g, dtype=torch.float64)
    cls, loc = head(template, search)
    with torch.no_grad():
        expected_cls = _xcorr_full_loop(head.search_cls(search), head.template_cls(template))
        expected_loc = head.loc_adjust(_xcorr_full_loop(head.search_loc(search), head.template_loc(template)))
    assert cls.shape == (2, 2, 5, 5) and loc.shape == (2, 8, 5, 5)
    torch.testing.assert_close(cls, expected_cls, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loc, expected_loc, rtol=1e-12, atol=1e-12)


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
