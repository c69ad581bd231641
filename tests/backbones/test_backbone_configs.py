"""Every conf/backbone/*.yaml instantiates with Hydra, and the deform switch works from overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from dcn.backbones import Backbone, DeformOptions
from dcn.ops import DeformConv2dPack

CONF_DIR = Path(__file__).resolve().parents[2] / "src" / "dcn" / "conf" / "backbone"
EXPECTED = {"seed_net", "five_conv_net", "resnet18", "resnet34", "resnet50", "resnet101", "vgg11", "vgg16"}


def test_all_backbone_configs_present():
    assert {p.stem for p in CONF_DIR.glob("*.yaml")} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_instantiates_deformable_by_default(name, config_backbone, compose_backbone):
    cfg = compose_backbone(name)
    assert set(cfg.deform) == set(DeformOptions.keys())
    assert cfg.deform.enabled is True
    model = config_backbone(name)
    assert isinstance(model, Backbone)
    # Deformable by default: exactly the 3x3 convs of the configured stages were converted.
    deformable = [n for n, m in model.named_modules() if isinstance(m, DeformConv2dPack)]
    assert deformable == model.deformable_layers and deformable
    assert model.deform_options.stages == tuple(cfg.deform.stages)


def test_deform_switch_from_command_line_overrides(compose_backbone):
    cfg = compose_backbone(
        "resnet18", "backbone.deform.enabled=false", "backbone.in_channels=1", "backbone.stem=small"
    )
    model = instantiate(cfg)
    assert not any(isinstance(m, DeformConv2dPack) for m in model.modules())
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (3, 3)
    out = model(torch.randn(1, 1, 28, 28))
    assert out["layer4"].shape == (1, 512, 4, 4)

    cfg = compose_backbone("seed_net", "backbone.deform.stages=[3,4]", "backbone.deform.modulated=true")
    model = instantiate(cfg)
    assert model.deformable_layers == ["layer3.conv", "layer4.conv"]
    assert all(m.modulated for m in model.modules() if isinstance(m, DeformConv2dPack))


def test_unknown_deform_key_in_config_is_an_error(compose_backbone):
    cfg = compose_backbone("seed_net", "+backbone.deform.stage=[4]")
    # Hydra wraps the constructor's ValueError; its message is kept.
    with pytest.raises(InstantiationException, match=r"unknown deform key\(s\) \['stage'\]"):
        instantiate(cfg)


def test_plain_config_is_plain_conv(compose_backbone):
    model = instantiate(compose_backbone("vgg11", "backbone.deform.enabled=false"))
    assert model.deformable_layers == []
    assert all(type(m) is nn.Conv2d for m in model.modules() if isinstance(m, (nn.Conv2d, DeformConv2dPack)))
