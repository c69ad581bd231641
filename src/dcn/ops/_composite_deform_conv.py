"""Deformable convolution composed of differentiable PyTorch operations (any device).

This is the op written the plain way: sample positions, bilinear weights, four gathered corners,
a weighted sum and a grouped matrix product, every step an autograd-tracked PyTorch operation. It
is slower and uses more memory than the fused backends (it materialises the four corner values of
every sample), but autograd can differentiate it any number of times. :mod:`dcn.ops.deform_conv`
uses it for the backward pass when that backward must itself be differentiable
(``create_graph=True``: gradient penalties, Hessian-vector products, meta-learning), on the
PyTorch and the CuPy backend alike.

Conventions are the backends': zero padding, a sample counts when ``-1 < y < H`` and
``-1 < x < W``, position derivatives one-sided from above at integer coordinates (the cell
``[floor(y), floor(y) + 1]``), a NaN position gives a NaN sample and an infinite one is outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dcn.ops._backend import ConvInputs, ConvParams


def deform_conv2d(x: ConvInputs, conv: ConvParams) -> Tensor:
    """Same contract as the backends' ``deform_conv2d_forward``, differentiable by autograd.

    Shapes: input (N, C_in, H, W), offset (N, 2*G*K, H_out, W_out), mask (N, G*K, H_out, W_out)
    or None, weight (C_out, C_in/groups, kh, kw), bias (C_out,) or None -> (N, C_out, H_out, W_out).
    """
    input, offset, mask, weight, bias = x
    stride, padding, dilation, groups, offset_groups = conv
    n, c_in, H, W = input.shape
    c_out, c_in_g, kh, kw = weight.shape
    h_out, w_out = offset.shape[-2:]
    K, L, G = kh * kw, h_out * w_out, offset_groups
    dtype, device = input.dtype, input.device

    # Sample positions (n, G, K, L): output position * stride - padding + kernel tap * dilation + offset.
    ky = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) * dilation[0]
    kx = torch.arange(kw, device=device, dtype=dtype).repeat(kh) * dilation[1]
    oy = (torch.arange(h_out, device=device, dtype=dtype) * stride[0] - padding[0]).repeat_interleave(w_out)
    ox = (torch.arange(w_out, device=device, dtype=dtype) * stride[1] - padding[1]).repeat(h_out)
    off = offset.reshape(n, G, K, 2, L)
    y = off[:, :, :, 0] + (ky.view(K, 1) + oy.view(1, L))
    x = off[:, :, :, 1] + (kx.view(K, 1) + ox.view(1, L))

    valid = (y > -1) & (y < H) & (x > -1) & (x < W)  # False for NaN and +-inf
    nan = torch.isnan(y) | torch.isnan(x)
    # Integer cell from the detached position (floor has zero derivative); the fractional parts
    # carry the position derivatives.
    y0 = torch.floor(y.detach().clamp(-1, H - 1).nan_to_num(nan=-1.0))
    x0 = torch.floor(x.detach().clamp(-1, W - 1).nan_to_num(nan=-1.0))
    zero = torch.zeros((), dtype=dtype, device=device)
    ly = torch.where(valid, y - y0, zero)
    lx = torch.where(valid, x - x0, zero)
    vf = valid.to(dtype)
    corner_weights = ((1 - ly) * (1 - lx) * vf, (1 - ly) * lx * vf, ly * (1 - lx) * vf, ly * lx * vf)

    # Corners read a copy of the input padded by one zero pixel, so indices never leave it.
    Hp, Wp = H + 2, W + 2
    table = F.pad(input, (1, 1, 1, 1)).reshape(n, G, c_in // G, Hp * Wp)
    base = ((y0.long() + 1) * Wp + (x0.long() + 1)).reshape(n, G, 1, K * L)
    sample = None
    for delta, w in zip((0, 1, Wp, Wp + 1), corner_weights):
        idx = (base + delta).expand(n, G, c_in // G, K * L)
        term = torch.gather(table, 3, idx) * w.reshape(n, G, 1, K * L)
        sample = term if sample is None else sample + term
    sample = torch.where(
        nan.reshape(n, G, 1, K * L), torch.full((), float("nan"), dtype=dtype, device=device), sample
    )
    if mask is not None:
        sample = sample * mask.reshape(n, G, 1, K * L)

    # (n, C_in, K, L) columns -> grouped product with weight (C_out, C_in/groups * K).
    cols = sample.reshape(n, groups, c_in_g * K, L)
    w = weight.reshape(groups, c_out // groups, c_in_g * K)
    out = torch.einsum("gok,ngkl->ngol", w, cols).reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out
