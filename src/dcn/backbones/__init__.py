"""Backbones: torchvision's generators (and the original study's small net) with a deformable switch.

Every backbone maps ``Tensor[N, C_in, H, W]`` to an ordered dict of feature maps described by
``feature_info`` (name, channels, stride), shallow to deep; ``out_channels`` is the deepest
feature's channel count. The ``deform`` config block (:class:`DeformOptions`) says which convs
become :class:`dcn.ops.DeformConv2dPack`.
"""

from dcn.backbones.deformable import DeformOptions, make_deformable
from dcn.backbones.features import Backbone, FeatureInfo
from dcn.backbones.five_conv_net import FiveConvNet
from dcn.backbones.frozen_bn import freeze_batch_norm
from dcn.backbones.pretrained import LoadReport, load_pretrained
from dcn.backbones.resnet import ResNetBackbone
from dcn.backbones.seed_net import SeedNet
from dcn.backbones.vgg import VGGBackbone

__all__ = [
    "Backbone",
    "DeformOptions",
    "FeatureInfo",
    "FiveConvNet",
    "LoadReport",
    "ResNetBackbone",
    "SeedNet",
    "VGGBackbone",
    "freeze_batch_norm",
    "load_pretrained",
    "make_deformable",
]
