"""Faster R-CNN over dcn backbones: both layouts, both poolers, deform on and off."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from dcn.backbones import ResNetBackbone
from dcn.ops import DeformConv2dPack, MultiScaleDeformRoIPool
from dcn.tasks.detection.model import FeatureSelectingRPN, build_faster_rcnn, freeze_stages

SMALL = dict(
    min_size=64,
    max_size=96,
    representation_size=64,
    rpn={
        "pre_nms_top_n_train": 100,
        "post_nms_top_n_train": 50,
        "pre_nms_top_n_test": 50,
        "post_nms_top_n_test": 20,
    },
    roi_heads={"batch_size_per_image": 32},
)


def _backbone(deform: bool, output_stride=None) -> ResNetBackbone:
    return ResNetBackbone("resnet18", deform={"enabled": deform}, output_stride=output_stride)


def _model(layout: str, roi_pool: str, deform: bool = True, **kwargs):
    torch.manual_seed(0)
    output_stride = 16 if layout == "c4" else None
    anchors = [[16], [32], [64], [128], [256]] if layout == "fpn" else [[16, 32, 64]]
    args = {**SMALL, "anchor_sizes": anchors, **kwargs}
    return build_faster_rcnn(_backbone(deform, output_stride), 4, layout, roi_pool, **args)


def _data():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 72, 64, generator=g)]
    targets = [
        {
            "boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 5.0, 70.0, 30.0]]),
            "labels": torch.tensor([1, 3]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    return images, targets


@pytest.mark.parametrize("layout", ["fpn", "c4"])
@pytest.mark.parametrize("roi_pool", ["align", "deform"])
@pytest.mark.parametrize("deform", [False, True])
def test_train_and_eval_forward(layout, roi_pool, deform):
    model = _model(layout, roi_pool, deform)
    assert any(isinstance(m, DeformConv2dPack) for m in model.modules()) == deform
    pooler = model.roi_heads.box_roi_pool
    assert isinstance(pooler, MultiScaleDeformRoIPool if roi_pool == "deform" else MultiScaleRoIAlign)
    images, targets = _data()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # Every trainable parameter that the losses reach gets a gradient; the deformable parts included.
    if deform:
        offset = next(m for m in model.modules() if isinstance(m, DeformConv2dPack)).conv_offset.weight
        assert offset.grad is not None and torch.isfinite(offset.grad).all()
    if roi_pool == "deform":
        assert pooler.offset_head.fc[-1].weight.grad is not None
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det, image in zip(detections, images):
        assert (
            det["boxes"].shape[1] == 4
            and det["boxes"].shape[0] == det["scores"].shape[0] == det["labels"].shape[0]
        )
        # Boxes come back in the input image's pixels (the model resized it internally).
        assert (det["boxes"][:, 2] <= image.shape[2] + 1e-4).all() and (
            det["boxes"][:, 3] <= image.shape[1] + 1e-4
        ).all()
        assert ((det["labels"] >= 1) & (det["labels"] < 4)).all()


@pytest.mark.parametrize("layout", ["fpn", "c4"])
def test_deformable_pooler_gives_the_same_detections_as_roialign_at_init(layout):
    align = _model(layout, "align").eval()
    deform = _model(layout, "deform").eval()
    missing, unexpected = deform.load_state_dict(align.state_dict(), strict=False)
    assert unexpected == [] and missing and all("box_roi_pool.offset_head" in k for k in missing)
    # Train the offset head's last layer away from zero first would break this; at init it is zero.
    images, _ = _data()
    with torch.no_grad():
        a, d = align(images), deform(images)
    assert sum(len(x["boxes"]) for x in a) > 0  # untrained, but the box head still scores the proposals
    for x, y in zip(a, d):
        torch.testing.assert_close(y["boxes"], x["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(y["scores"], x["scores"], rtol=0, atol=1e-5)
        assert torch.equal(y["labels"], x["labels"])


def test_deformable_pooler_differs_once_its_offsets_move():
    # The test above must be able to fail: with a non-zero offset head the detections change.
    align = _model("fpn", "align").eval()
    deform = _model("fpn", "deform").eval()
    deform.load_state_dict(align.state_dict(), strict=False)
    with torch.no_grad():
        deform.roi_heads.box_roi_pool.offset_head.fc[-1].bias.fill_(3.0)
        images, _ = _data()
        a, d = align(images), deform(images)
    assert any(
        x["scores"].shape != y["scores"].shape or not torch.allclose(x["scores"], y["scores"])
        for x, y in zip(a, d)
    )


def test_c4_rpn_runs_on_conv4_only():
    model = _model("c4", "align")
    assert isinstance(model.rpn, FeatureSelectingRPN) and model.rpn.feature_names == ["c4"]
    images, _ = _data()
    model.eval()
    seen = []
    model.rpn.head.register_forward_hook(lambda m, inp, out: seen.append([f.shape for f in inp[0]]))
    with torch.no_grad():
        model(images)
    (shapes,) = seen
    assert len(shapes) == 1 and shapes[0][1] == 256  # layer3 of ResNet-18: 256 channels, one level
    assert model.roi_heads.box_roi_pool.featmap_names == ["c5"]


def test_c4_needs_the_dilated_backbone():
    with pytest.raises(ValueError, match="output_stride=16"):
        build_faster_rcnn(_backbone(False), 3, "c4", "align")


def test_bad_settings_name_the_config_key():
    backbone = _backbone(False)
    with pytest.raises(ValueError, match="task.layout"):
        build_faster_rcnn(backbone, 3, "c5", "align")
    with pytest.raises(ValueError, match="task.roi_pool"):
        build_faster_rcnn(backbone, 3, "fpn", "roi")
    with pytest.raises(ValueError, match="task.rpn"):
        build_faster_rcnn(backbone, 3, "fpn", "align", rpn={"nms": 0.7})
    with pytest.raises(ValueError, match="task.roi_heads"):
        build_faster_rcnn(backbone, 3, "fpn", "align", roi_heads={"batch": 4})
    with pytest.raises(ValueError, match="task.anchor_sizes"):
        build_faster_rcnn(backbone, 3, "fpn", "align", anchor_sizes=[[32], [64]])
    with pytest.raises(ValueError, match="task.fpn_features"):
        build_faster_rcnn(backbone, 3, "fpn", "align", fpn_features=("layer2", "layer9"))
    with pytest.raises(ValueError, match="task.deform_roi_pool"):
        build_faster_rcnn(backbone, 3, "fpn", "deform", deform_roi_pool={"gama": 0.1})
    with pytest.raises(ValueError, match="num_classes"):
        build_faster_rcnn(backbone, 1, "fpn", "align")


def test_rpn_and_roi_head_settings_reach_torchvision():
    model = _model(
        "fpn", "align", rpn={"nms_thresh": 0.6, "fg_iou_thresh": 0.65}, roi_heads={"detections_per_img": 7}
    )
    assert model.rpn.nms_thresh == 0.6 and model.rpn.proposal_matcher.high_threshold == 0.65
    assert model.roi_heads.detections_per_img == 7
    c4 = _model("c4", "align", rpn={"fg_iou_thresh": 0.65, "batch_size_per_image": 64})
    assert c4.rpn.proposal_matcher.high_threshold == 0.65 and c4.rpn.fg_bg_sampler.batch_size_per_image == 64


def test_frozen_stages_and_frozen_batchnorm():
    backbone = _backbone(False)
    assert freeze_stages(backbone, 1) == ["conv1", "bn1", "layer1"]
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    model = _model("fpn", "align", freeze_bn=True, frozen_stages=0)
    body = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert not body.conv1.weight.requires_grad and body.layer1[0].conv1.weight.requires_grad


def test_a_narrower_pyramid_on_fewer_levels():
    # frcnn_synthetic's setting: FPN on layer2..layer4 at 128 channels -> P3..P5 pooled, plus the
    # max-pooled level.
    model = _model(
        "fpn",
        "deform",
        fpn_features=("layer2", "layer3", "layer4"),
        fpn_channels=128,
        anchor_sizes=[[16], [32], [64], [128]],
    )
    assert model.backbone.out_channels == 128 and model.roi_heads.box_roi_pool.featmap_names == [
        "0",
        "1",
        "2",
    ]
    images, targets = _data()
    features = model.backbone(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in features.values()] == [
        (128, 8, 8),
        (128, 4, 4),
        (128, 2, 2),
        (128, 1, 1),
    ]
    losses = model(images, targets)
    assert torch.isfinite(sum(losses.values()))


def test_per_level_offset_heads_reach_the_pooler_and_train():
    from dcn.results import parameter_counts

    shared = _model("fpn", "deform", deform_roi_pool={"hidden_channels": 32})
    per_level = _model("fpn", "deform", deform_roi_pool={"hidden_channels": 32, "offset_heads": "per_level"})
    pool = per_level.roi_heads.box_roi_pool
    assert pool.offset_heads_mode == "per_level" and len(pool.offset_heads) == 4  # P2..P5
    assert (
        parameter_counts(per_level)["roi_offset_head"] == 4 * parameter_counts(shared)["roi_offset_head"] > 0
    )
    images, targets = _data()
    losses = per_level(images, targets)
    sum(losses.values()).backward()
    # The zero-initialised last layers get gradients from the detection losses (at least one level has boxes).
    assert any(
        h.fc[-1].weight.grad is not None and h.fc[-1].weight.grad.abs().sum() > 0 for h in pool.offset_heads
    )
