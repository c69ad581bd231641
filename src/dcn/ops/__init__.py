"""Deformable ops: functional API beside nn.Modules, as torchvision does."""

from dcn.ops.deform_conv import (
    BACKENDS,
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2dPack,
    deform_conv2d,
)
from dcn.ops.deform_roi_pool import (
    DeformRoIPool,
    DeformRoIPoolPack,
    ModulatedDeformRoIPoolPack,
    MultiScaleDeformRoIPool,
    deform_roi_pool,
)

__all__ = ["BACKENDS", "DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack", "deform_conv2d"]
__all__ += [
    "DeformRoIPool",
    "DeformRoIPoolPack",
    "ModulatedDeformRoIPoolPack",
    "MultiScaleDeformRoIPool",
    "deform_roi_pool",
]
