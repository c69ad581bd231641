"""VGG backbones: torchvision's layers, stages split at the max-pools, deform switch."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dcn.backbones import VGGBackbone
from dcn.ops import DeformConv2dPack


@pytest.mark.parametrize("arch", ["vgg11", "vgg16"])
def test_features_are_torchvisions(arch):
    ours = VGGBackbone(arch, deform=False)
    with torch.device("meta"):  # names and shapes only
        reference = getattr(torchvision.models, f"{arch}_bn")().features
    expected = {f"features.{k}": v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected


def test_stages_split_at_the_pools():
    model = VGGBackbone("vgg11", deform={"stages": [3, 5]})
    # vgg11: 1, 1, 2, 2, 2 convs per stage; features indices of the convs in stages 3 and 5.
    assert model.deformable_layers == ["features.8", "features.11", "features.22", "features.25"]
    assert [(f.name, f.channels, f.stride) for f in model.feature_info] == [
        ("stage1", 64, 2),
        ("stage2", 128, 4),
        ("stage3", 256, 8),
        ("stage4", 512, 16),
        ("stage5", 512, 32),
    ]


def test_forward_backward_with_all_options():
    model = VGGBackbone(
        "vgg11", in_channels=1, deform={"modulated": True, "offset_groups": 2, "extra_layers": 1}
    )
    assert model.features[0].in_channels == 1
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    out = model(x)
    assert list(out) == ["stage1", "stage2", "stage3", "stage4", "stage5", "extra"]
    assert out["extra"].shape == (2, 512, 1, 1)
    out["extra"].sum().backward()
    assert x.grad is not None
    layers = [m for m in model.modules() if isinstance(m, DeformConv2dPack)]
    assert len(layers) == 3 and all(m.modulated and m.offset_groups == 2 for m in layers)


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"vgg11 needs inputs of at least 32x32 .* got \(28, 28\)"):
        VGGBackbone("vgg11", in_channels=1, deform=False)(torch.randn(1, 1, 28, 28))


def test_bad_arch():
    with pytest.raises(ValueError, match=r"unknown VGG arch 'vgg19'"):
        VGGBackbone("vgg19")
    with pytest.raises(ValueError, match=r"stage\(s\) \[6\] that vgg16 does not have"):
        VGGBackbone("vgg16", deform={"stages": [6]})


def test_deform_off_is_plain():
    model = VGGBackbone("vgg11", deform={"enabled": False})
    assert not any(isinstance(m, DeformConv2dPack) for m in model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 8
