"""The deform config block and the conversion of convs to DeformConv2dPack."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dcn.backbones import DeformOptions, make_deformable
from dcn.ops import DeformConv2dPack


def test_coerce_accepts_dictconfig_dict_bool_and_none():
    cfg = OmegaConf.create(
        {"enabled": True, "stages": [4, 3], "modulated": True, "offset_groups": 2, "extra_layers": 1}
    )
    assert DeformOptions.coerce(cfg) == DeformOptions(True, (3, 4), True, 2, 1)
    assert DeformOptions.coerce({"enabled": False}) == DeformOptions(enabled=False)
    assert DeformOptions.coerce(False) == DeformOptions(enabled=False)
    assert DeformOptions.coerce(True) == DeformOptions()
    assert DeformOptions.coerce(None).enabled is False
    opts = DeformOptions()
    assert DeformOptions.coerce(opts) is opts


def test_default_stages_resolve_to_the_last_stage():
    assert DeformOptions().for_arch((1, 2, 3, 4, 5), "vgg16").stages == (5,)
    assert DeformOptions(stages=[2]).for_arch((1, 2, 3, 4), "resnet18").stages == (2,)


@pytest.mark.parametrize(
    "value, error, message",
    [
        ({"stage": [4]}, ValueError, r"unknown deform key\(s\) \['stage'\]"),
        ({"enabled": "yes"}, TypeError, "deform.enabled must be true or false"),
        ({"stages": "4"}, TypeError, "deform.stages must be a list"),
        ({"stages": [4.0]}, TypeError, "deform.stages must be a list of integers"),
        ({"stages": [4, 4]}, ValueError, "lists a stage twice"),
        ({"offset_groups": 0}, ValueError, "deform.offset_groups must be >= 1"),
        ({"extra_layers": -1}, ValueError, "deform.extra_layers must be >= 0"),
        ({"modulated": 1}, TypeError, "deform.modulated must be true or false"),
        ([4], TypeError, "deform must be a mapping"),
    ],
)
def test_bad_values_name_the_key(value, error, message):
    with pytest.raises(error, match=message):
        DeformOptions.coerce(value)


def test_stages_are_checked_against_the_architecture():
    with pytest.raises(
        ValueError, match=r"stage\(s\) \[5\] that resnet18 does not have; choose from \[1, 2, 3, 4\]"
    ):
        DeformOptions(stages=[4, 5]).for_arch((1, 2, 3, 4), "resnet18")
    with pytest.raises(ValueError, match="no layer of resnet18 would be deformable"):
        DeformOptions(stages=[]).for_arch((1, 2, 3, 4), "resnet18")
    # Only the extra layers deformable is a valid choice; disabled with no stages too.
    DeformOptions(stages=[], extra_layers=1).for_arch((1, 2, 3, 4), "resnet18")
    DeformOptions(enabled=False, stages=[]).for_arch((1, 2, 3, 4), "resnet18")


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=2, dilation=2),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)),
        nn.Conv2d(8, 8, 3, padding=1),
    )


def test_make_deformable_converts_spatial_convs_of_the_named_parts_only():
    torch.manual_seed(0)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    names = make_deformable(net, ["0", "1"], DeformOptions(modulated=True, offset_groups=2))
    assert names == ["0", "1.1"]
    assert isinstance(net[0], DeformConv2dPack) and isinstance(net[1][1], DeformConv2dPack)
    assert type(net[1][0]) is nn.Conv2d  # 1x1 stays plain
    assert type(net[2]) is nn.Conv2d  # not named
    # Geometry and weights carried over; the new predictor outputs 3 * G * 9 channels.
    assert (net[0].dilation, net[0].padding) == ((2, 2), (2, 2))
    assert (net[1][1].stride, net[1][1].bias) == ((2, 2), None)
    assert net[0].modulated and net[0].offset_groups == 2
    assert net[0].conv_offset.out_channels == 3 * 2 * 9
    after = net.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_make_deformable_checks_offset_groups():
    with pytest.raises(ValueError, match="deform.offset_groups=3 must divide .* but 0 has 4"):
        make_deformable(_net(), ["0"], DeformOptions(offset_groups=3))
