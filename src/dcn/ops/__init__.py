"""Deformable ops: functional API beside nn.Modules, as torchvision does."""

from dcn.ops.deform_conv import BACKENDS, DeformConv2d, deform_conv2d
from dcn.ops.deform_roi_pool import DeformRoIPool, MultiScaleDeformRoIPool, deform_roi_pool

__all__ = ["BACKENDS", "DeformConv2d", "deform_conv2d"]
__all__ += ["DeformRoIPool", "MultiScaleDeformRoIPool", "deform_roi_pool"]
