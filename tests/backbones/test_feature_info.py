"""feature_info describes the actual outputs (names, order, channels, strides) for every config."""

from __future__ import annotations

import math

import pytest
import torch

NAMES = ["seed_net", "resnet18", "resnet34", "resnet50", "resnet101", "vgg11", "vgg16"]


@pytest.mark.parametrize("name", NAMES)
def test_feature_info_matches_outputs(name, config_backbone):
    model = config_backbone(name)  # shared, eval mode, deformable (the config defaults)
    h, w = 64, 96
    with torch.no_grad():
        out = model(torch.randn(1, model.in_channels, h, w))
    assert list(out) == [f.name for f in model.feature_info]
    for info in model.feature_info:
        feat = out[info.name]
        assert feat.shape[1] == info.channels, info
        # Pools with padding round up, unpadded 2x2 pools round down: both agree on these sizes.
        assert feat.shape[-2:] == (math.ceil(h / info.stride), math.ceil(w / info.stride)), info
    assert model.out_channels == model.feature_info[-1].channels == out[model.feature_info[-1].name].shape[1]
    strides = [f.stride for f in model.feature_info]
    assert strides == sorted(strides), "features must be ordered shallow to deep"
