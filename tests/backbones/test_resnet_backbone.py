"""ResNet backbones: output stride by dilation (Basic and Bottleneck blocks), stems, deform options."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dcn.backbones import ResNetBackbone
from dcn.ops import DeformConv2dPack


def conv_geometry(model: nn.Module) -> dict:
    return {
        name: (m.stride, m.dilation, m.padding)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, DeformConv2dPack))
        and name.startswith("layer")
        and "conv_offset" not in name
    }


@pytest.mark.parametrize("output_stride, replace", [(16, [False, False, True]), (8, [False, True, True])])
def test_dilation_matches_torchvision_for_bottleneck(output_stride, replace):
    ours = ResNetBackbone("resnet50", deform=False, output_stride=output_stride)
    with torch.device("meta"):  # geometry only: skip allocating and initialising weights
        reference = torchvision.models.resnet50(replace_stride_with_dilation=replace)
    assert conv_geometry(ours) == conv_geometry(reference)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_gives_expected_feature_sizes(arch, output_stride):
    model = ResNetBackbone(arch, output_stride=output_stride).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 64))
    expected = {
        "stem": 2,
        "layer1": 4,
        "layer2": 8,
        "layer3": min(16, output_stride),
        "layer4": output_stride,
    }
    assert {k: (32 // v.shape[-2], 64 // v.shape[-1]) for k, v in out.items()} == {
        k: (s, s) for k, s in expected.items()
    }
    assert {f.name: f.stride for f in model.feature_info} == expected
    widths = [64, 128, 256, 512] if arch == "resnet18" else [256, 512, 1024, 2048]
    assert [out[f"layer{i}"].shape[1] for i in range(1, 5)] == widths


def test_basicblock_dilation_keeps_receptive_field_pattern():
    model = ResNetBackbone("resnet18", deform=False, output_stride=8)
    geometry = conv_geometry(model)
    # The conv that carried the stride keeps the previous dilation, later 3x3 convs double it.
    assert geometry["layer3.0.conv1"] == ((1, 1), (1, 1), (1, 1))
    assert geometry["layer3.0.conv2"] == ((1, 1), (2, 2), (2, 2))
    assert geometry["layer3.0.downsample.0"] == ((1, 1), (1, 1), (0, 0))
    assert geometry["layer4.0.conv1"] == ((1, 1), (2, 2), (2, 2))
    assert geometry["layer4.1.conv2"] == ((1, 1), (4, 4), (4, 4))


def test_deformable_convs_keep_their_dilation():
    model = ResNetBackbone("resnet18", deform={"stages": [3, 4]}, output_stride=8)
    assert model.deformable_layers == [
        f"layer{s}.{b}.conv{c}" for s in (3, 4) for b in (0, 1) for c in (1, 2)
    ]
    plain = ResNetBackbone("resnet18", deform=False, output_stride=8)
    assert conv_geometry(model) == conv_geometry(plain)
    assert model.layer4[1].conv2.dilation == (4, 4)
    assert model.layer4[1].conv2.conv_offset.dilation == (4, 4)


def test_paper_default_converts_the_three_3x3_convs_of_the_last_stage():
    model = ResNetBackbone("resnet50")
    assert model.deformable_layers == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]


def test_small_stem():
    model = ResNetBackbone("resnet18", in_channels=1, stem="small", deform=False).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert [f.stride for f in model.feature_info] == [1, 1, 2, 4, 8]
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out["layer4"].shape == (2, 512, 4, 4)
    assert (
        ResNetBackbone("resnet18", stem="small", output_stride=2, deform=False).feature_info[-1].stride == 2
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"modulated": True, "offset_groups": 4, "stages": [3, 4], "extra_layers": 2},
        {"stages": [], "extra_layers": 1},  # only the appended layers deformable
    ],
    ids=["v2-groups-extra", "extra-only"],
)
def test_deform_variants_run_forward_and_backward(kwargs):
    model = ResNetBackbone("resnet18", deform=kwargs, output_stride=16)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert list(out) == [f.name for f in model.feature_info]
    out[model.feature_info[-1].name].square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    offsets = [m.conv_offset.weight for m in model.modules() if isinstance(m, DeformConv2dPack)]
    assert offsets and all(w.grad is not None and w.grad.abs().sum() > 0 for w in offsets)
    for m in model.modules():
        if isinstance(m, DeformConv2dPack):
            assert m.modulated == kwargs.get("modulated", False)
            assert m.offset_groups == kwargs.get("offset_groups", 1)
    if kwargs.get("extra_layers"):
        assert model.feature_info[-1].name == "extra" and model.feature_info[-1].channels == 512
        assert len(model.extra) == kwargs["extra_layers"]


def test_extra_layers_stay_plain_when_deform_is_off():
    model = ResNetBackbone("resnet18", deform={"enabled": False, "extra_layers": 1})
    assert type(model.extra[0].conv) is nn.Conv2d and model.deformable_layers == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "resnet152"}, r"unknown ResNet arch 'resnet152'; expected one of \['resnet18'"),
        (
            {"output_stride": 4},
            r"output_stride=4 is not possible for resnet18 with stem='imagenet'; choose from \[32, 16, 8\]",
        ),
        ({"stem": "tiny"}, r"unknown stem 'tiny'"),
        ({"deform": {"stages": [0]}}, r"stage\(s\) \[0\] that resnet18 does not have"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs = {"arch": "resnet18", **kwargs}
    with pytest.raises(ValueError, match=message):
        ResNetBackbone(**kwargs)
