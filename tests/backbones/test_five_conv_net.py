"""five_conv_net: the published scaled-MNIST network, its sizes, its deform switch and its config."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from dcn.backbones import FiveConvNet
from dcn.ops import DeformConv2dPack
from dcn.tasks.classification.head import ClassificationHead


def _parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_shapes_strides_and_the_published_parameter_count():
    net = FiveConvNet(1, deform=False)
    out = net(torch.randn(2, 1, 28, 28))
    assert list(out) == [f"layer{i}" for i in range(1, 6)]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(14, 14), (7, 7), (7, 7), (7, 7), (7, 7)]
    assert [(f.channels, f.stride) for f in net.feature_info] == [(32, 2)] + [(32, 4)] * 4
    # 5 convs of 32 channels with bias + Linear(32, 10): the published MNISTClassifier's 37,642 parameters.
    assert _parameters(net, ClassificationHead(net.out_channels, 10)) == 37_642
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("modulated, offset_channels", [(False, 18), (True, 27)])
def test_conv4_and_conv5_deformable_by_default(modulated, offset_channels):
    net = FiveConvNet(1, deform={"modulated": modulated, "stages": [4, 5]})
    assert net.deformable_layers == ["layer4.conv", "layer5.conv"]
    plain = _parameters(FiveConvNet(1, deform=False))
    assert _parameters(net) == plain + 2 * (32 * offset_channels * 9 + offset_channels)
    assert all(
        m.conv_offset.out_channels == offset_channels
        for m in net.modules()
        if isinstance(m, DeformConv2dPack)
    )


def test_deformable_net_starts_as_its_plain_twin():
    torch.manual_seed(0)
    plain = FiveConvNet(1, deform=False)
    deformable = FiveConvNet(1, deform={"stages": [4, 5]})
    missing, unexpected = deformable.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("conv_offset" in k for k in missing)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(deformable(x)["layer5"], plain(x)["layer5"], rtol=1e-5, atol=1e-5)


def test_bad_stage_is_named():
    with pytest.raises(ValueError, match=r"stage\(s\) \[6\] that five_conv_net does not have"):
        FiveConvNet(1, deform={"stages": [6]})


def test_config_composes_with_conv4_5_deformable(compose_backbone):
    cfg = compose_backbone("five_conv_net", "backbone.deform.modulated=true")
    net = instantiate(cfg)
    assert isinstance(net, FiveConvNet) and net.deformable_layers == ["layer4.conv", "layer5.conv"]
    assert net.deform_options.modulated
    plain = instantiate(
        compose_backbone("five_conv_net", "backbone.deform.enabled=false", "backbone.in_channels=3")
    )
    assert plain.deformable_layers == [] and plain(torch.randn(1, 3, 32, 32))["layer5"].shape == (1, 32, 8, 8)
