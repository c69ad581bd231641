"""What a backend of dcn's ops takes: the op's tensors and its settings, one named tuple each.

Every backend module (``dcn.ops._torch_<op>`` on any device, ``dcn.ops._cupy_<op>`` on CUDA) provides

* ``deform_conv2d_forward(x: ConvInputs, conv: ConvParams) -> Tensor[N, C_out, H_out, W_out]``
* ``deform_conv2d_backward(grad_out, x: ConvInputs, conv: ConvParams, needs_input_grad)``
  -> gradients ordered like :class:`ConvInputs` (None where not needed or not applicable)
* ``deform_roi_pool_forward(x: PoolInputs, pool: PoolParams) -> Tensor[K, C, out_h, out_w]``
* ``deform_roi_pool_backward(grad_out, x: PoolInputs, pool: PoolParams, needs_input_grad)``
  -> (grad_input, grad_offset): the boxes get no gradient, as in roi_align

and the composite ops (``dcn.ops._composite_<op>``) the forward with the same arguments. The public
functions (:func:`dcn.ops.deform_conv2d`, :func:`dcn.ops.deform_roi_pool`) validate the arguments
before any backend sees them. A backend never modifies its inputs.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["ConvInputs", "ConvParams", "PoolInputs", "PoolParams", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops compute and accumulate in for tensors of ``dtype``: float32 for float16 and
    bfloat16 (as torchvision under autocast, and the CUDA kernels' ``acc_type<T>``, common.cuh), else
    ``dtype`` itself. Boxes and offsets of 16-bit features stay in it too (16-bit box coordinates would
    move whole bins)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class ConvInputs(NamedTuple):
    """deform_conv2d's tensors, in the order of torchvision's kernel (and of the gradients).

    Shapes: input (N, C_in, H, W), offset (N, 2 * G * kh * kw, H_out, W_out) with G offset groups,
    mask (N, G * kh * kw, H_out, W_out) or None, weight (C_out, C_in / groups, kh, kw), bias (C_out,)
    or None.
    """

    input: Tensor
    offset: Tensor
    mask: Optional[Tensor]
    weight: Tensor
    bias: Optional[Tensor]


class ConvParams(NamedTuple):
    """deform_conv2d's geometry: (h, w) pairs and the two group counts."""

    stride: Sequence[int]
    padding: Sequence[int]
    dilation: Sequence[int]
    groups: int
    offset_groups: int


class PoolInputs(NamedTuple):
    """deform_roi_pool's tensors. Shapes: input (N, C, H, W), rois (K, 5) rows (batch index, x1, y1,
    x2, y2) in image coordinates, offset (K, 2, out_h, out_w) or None."""

    input: Tensor
    rois: Tensor
    offset: Optional[Tensor]


class PoolParams(NamedTuple):
    """deform_roi_pool's settings: (out_h, out_w), feature/image scale, samples per bin (0: adaptive),
    offset scale and roi_align's pixel-shift convention."""

    output_size: Sequence[int]
    spatial_scale: float
    sampling_ratio: int
    gamma: float
    aligned: bool
