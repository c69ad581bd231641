"""DeepLab network: output shapes at OS8/OS16, ASPP rates, the decoder's low-level feature, dilation of
deformable convs, and a deformable net that starts equal to its plain twin."""

from __future__ import annotations

import pytest
import torch

from dcn.backbones import ResNetBackbone
from dcn.ops import DeformConv2dPack
from dcn.tasks.segmentation import DeepLab, aspp_rates_for


@pytest.mark.parametrize("deform", [False, True], ids=["plain", "deform"])
@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_output_shape_is_input_size(arch, output_stride, deform):
    torch.manual_seed(0)
    backbone = ResNetBackbone(arch, output_stride=output_stride, deform={"enabled": deform})
    net = DeepLab(backbone, num_classes=5, aspp_channels=32, decoder_channels=32).eval()
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        features = backbone(x)
        logits = net(x)
    assert logits.shape == (2, 5, 64, 72)
    assert torch.isfinite(logits).all()
    # The deep feature really is at the requested stride, the decoder's at stride 4.
    assert features["layer4"].shape[-2:] == (-(-64 // output_stride), -(-72 // output_stride))  # ceil
    assert net.low_level_feature == "layer1" and features["layer1"].shape[-2:] == (16, 18)
    assert any(isinstance(m, DeformConv2dPack) for m in net.modules()) == deform


@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplabv3_head_without_decoder(output_stride):
    net = DeepLab(
        ResNetBackbone("resnet18", output_stride=output_stride), 3, head="deeplabv3", aspp_channels=16
    ).eval()
    assert net.low_level_feature is None and not hasattr(net.head, "low_level")
    with torch.no_grad():
        assert net(torch.randn(1, 3, 48, 40)).shape == (1, 3, 48, 40)


def test_aspp_rates_follow_output_stride():
    assert aspp_rates_for(16) == (6, 12, 18)
    assert aspp_rates_for(8) == (12, 24, 36)
    assert aspp_rates_for(32) == (3, 6, 9)
    with pytest.raises(ValueError, match="aspp_rates"):
        aspp_rates_for(64)  # 6 * 16 / 64 is not an integer
    net = DeepLab(ResNetBackbone("resnet18", output_stride=8), 3, aspp_channels=16)
    dilations = [
        m.dilation
        for m in net.head.aspp.convs.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert dilations == [(12, 12), (24, 24), (36, 36)]
    explicit = DeepLab(ResNetBackbone("resnet18", output_stride=8), 3, aspp_rates=[1, 2], aspp_channels=16)
    assert explicit.aspp_rates == (1, 2)


def test_head_layout_and_dropout():
    net = DeepLab(ResNetBackbone("resnet18", output_stride=16), 4, aspp_dropout=0.3)
    head = net.head
    assert head.low_level[0].out_channels == 48 and head.low_level[0].in_channels == 64
    assert head.decoder[0][0].in_channels == 256 + 48 and head.decoder[1][0].out_channels == 256
    assert head.classifier.out_channels == 4
    assert head.aspp.project[-1].p == 0.3
    assert len(head.aspp.convs) == 5  # 1x1, three atrous 3x3, image pooling


def test_deformable_convs_keep_their_dilation_at_output_stride_8():
    net = DeepLab(ResNetBackbone("resnet18", output_stride=8, deform={"enabled": True, "stages": [3, 4]}), 3)
    deform = {n: m for n, m in net.backbone.named_modules() if isinstance(m, DeformConv2dPack)}
    # layer3 dilated by 2 (its first conv keeps 1), layer4 by 4 (its first conv keeps 2).
    assert deform["layer3.0.conv1"].dilation == (1, 1) and deform["layer3.1.conv2"].dilation == (2, 2)
    assert deform["layer4.0.conv1"].dilation == (2, 2) and deform["layer4.1.conv2"].dilation == (4, 4)
    assert all(m.stride == (1, 1) for n, m in deform.items() if n.startswith("layer4"))


def test_deformable_net_starts_equal_to_its_plain_twin():
    torch.manual_seed(0)
    plain = DeepLab(
        ResNetBackbone("resnet18", output_stride=16, deform={"enabled": False}), 3, aspp_channels=16
    ).eval()
    deform = DeepLab(
        ResNetBackbone("resnet18", output_stride=16, deform={"enabled": True}), 3, aspp_channels=16
    ).eval()
    missing, unexpected = deform.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("conv_offset" in k for k in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(deform(x), plain(x), rtol=1e-4, atol=1e-4)


def test_bad_configuration_errors_name_the_key():
    backbone = ResNetBackbone("resnet18", output_stride=16)
    with pytest.raises(ValueError, match="task.head"):
        DeepLab(backbone, 3, head="unet")
    with pytest.raises(ValueError, match="task.low_level_feature='layer9'"):
        DeepLab(backbone, 3, low_level_feature="layer9")
    with pytest.raises(ValueError, match="task.aspp_dropout"):
        DeepLab(backbone, 3, aspp_dropout=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        DeepLab(backbone, 1)
    with pytest.raises(TypeError, match="feature_info"):
        DeepLab(torch.nn.Conv2d(3, 3, 1), 3)
    # The small stem at output stride 2 has no stride-4 feature at all.
    small = ResNetBackbone("resnet18", stem="small", output_stride=2)
    with pytest.raises(ValueError, match="stride-4"):
        DeepLab(small, 3)
