"""The original study's Experiment-1 network: exact size, deform switch, features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dcn.backbones import FeatureInfo, SeedNet
from dcn.ops import DeformConv2dPack


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_parameter_count_matches_the_seed():
    backbone = SeedNet(in_channels=1)
    classifier = nn.Linear(backbone.out_channels, 10)  # what the classification task appends
    assert n_params(backbone, classifier) == 262_876


def test_layer4_is_the_seeds_deformable_conv():
    layer = SeedNet(in_channels=1).layer4.conv
    assert isinstance(layer, DeformConv2dPack)
    assert layer.weight.shape == (128, 128, 3, 3) and layer.bias is None
    assert layer.conv_offset.weight.shape == (18, 128, 3, 3) and layer.conv_offset.bias.shape == (18,)
    assert (layer.stride, layer.padding, layer.dilation) == ((1, 1), (1, 1), (1, 1))


def test_deform_off_is_a_plain_conv_with_the_same_weight_shapes():
    plain, deformable = SeedNet(1, deform={"enabled": False}), SeedNet(1)
    conv = plain.layer4.conv
    assert type(conv) is nn.Conv2d
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding, conv.bias) == (
        128,
        128,
        (3, 3),
        (1, 1),
        None,
    )
    plain_shapes = {k: v.shape for k, v in plain.state_dict().items()}
    deform_shapes = {k: v.shape for k, v in deformable.state_dict().items() if ".conv_offset." not in k}
    assert plain_shapes == deform_shapes
    # The only extra parameters of the deformable twin are its offset predictor.
    assert n_params(deformable) - n_params(plain) == 128 * 18 * 9 + 18


def test_plain_weights_give_the_same_function_at_init(tmp_path):
    torch.manual_seed(0)
    plain = SeedNet(1, deform=False).double().eval()
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    deformable = SeedNet(1, pretrained=str(tmp_path / "plain.pt")).double().eval()
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        a, b = plain(x), deformable(x)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-12)


def test_features_and_extra_layers():
    model = SeedNet(in_channels=3, deform={"stages": [2, 4], "extra_layers": 2, "modulated": True})
    assert model.feature_info == [
        FeatureInfo("layer1", 32, 1),
        FeatureInfo("layer2", 64, 1),
        FeatureInfo("layer3", 128, 1),
        FeatureInfo("layer4", 128, 1),
        FeatureInfo("extra", 128, 1),
    ]
    assert model.deformable_layers == ["layer2.conv", "layer4.conv", "extra.0.conv", "extra.1.conv"]
    x = torch.randn(2, 3, 9, 7)
    out = model(x)
    assert list(out) == [f.name for f in model.feature_info]
    for info in model.feature_info:
        assert out[info.name].shape == (2, info.channels, 9, 7)
    out["extra"].sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_torchvision_weights_are_refused():
    with pytest.raises(ValueError, match="seed_net has no torchvision weights"):
        SeedNet(pretrained="torchvision")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_in_channels(bad):
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        SeedNet(in_channels=bad)


def test_input_channels_are_checked():
    with pytest.raises(ValueError, match=r"built for in_channels=1 but the input has 3 channels"):
        SeedNet(1)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expects a 4-D input \(N, 1, H, W\), got \(1, 8, 8\)"):
        SeedNet(1)(torch.randn(1, 8, 8))
