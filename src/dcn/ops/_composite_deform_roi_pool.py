"""Deformable RoI pooling composed of differentiable PyTorch operations (any device).

The op written the plain way: every bin's sample coordinates (roi_align's grid moved by the offsets),
roi_align's border rule, the four bilinear corners gathered from a channels-last pixel table and
averaged with their weights, each step an autograd-tracked operation. It materialises every sample's
corners (memory grows with boxes x bins x samples x channels), but autograd can differentiate it any
number of times: :mod:`dcn.ops.deform_roi_pool` uses it for the backward pass when that backward must
itself be differentiable (``create_graph=True``), on both backends.

Conventions are the backends' (roi_align's arithmetic, ``aligned`` shift, adaptive grids, a NaN
offset gives a NaN bin, 16-bit features computed in float32 with boxes and offsets in float32). The
boxes get no gradient, as in roi_align. Its backward is deterministic on CUDA under
``torch.use_deterministic_algorithms(True)`` (``index_select``'s backward then is), so it is also the
deterministic backward off the CPU. With a fixed ``sampling_ratio`` it makes no host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcn.ops._backend import PoolInputs, PoolParams, compute_dtype


def deform_roi_pool(x: PoolInputs, pool: PoolParams) -> Tensor:
    """Same contract as the backends' ``deform_roi_pool_forward``, differentiable by autograd.

    Shapes: input (N, C, H, W), rois (K, 5), offset (K, 2, out_h, out_w) or None -> (K, C, out_h, out_w),
    in input's dtype; float16/bfloat16 inputs are computed in float32 (rois and offset may be float32).
    """
    input, rois, offset = x
    output_size, spatial_scale, sampling_ratio, gamma, aligned = pool
    out_h, out_w = output_size
    n, c, H, W = input.shape
    K = rois.shape[0]
    if K == 0:
        return input.new_zeros((0, c, out_h, out_w))
    out_dtype, device = input.dtype, input.device
    # 16-bit features are computed in float32, like the kernels: geometry from 16-bit boxes would be off
    # by up to 2 px at 512-1024 px (bfloat16), and autograd returns each gradient in its tensor's dtype.
    dtype = compute_dtype(out_dtype)
    input = input.to(dtype)
    offset = offset.to(dtype) if offset is not None else None
    rois = rois.detach().to(dtype)
    shift = 0.5 if aligned else 0.0
    start_x, start_y = rois[:, 1] * spatial_scale - shift, rois[:, 2] * spatial_scale - shift
    width = rois[:, 3] * spatial_scale - shift - start_x
    height = rois[:, 4] * spatial_scale - shift - start_y
    if not aligned:
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    bin_w, bin_h = width / out_w, height / out_h
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.int64, device=device)
        grid_w = grid_h
        gh = gw = sampling_ratio  # known on the host: no sync, so a CUDA graph can capture the op
    else:
        grid_h = torch.ceil(bin_h).clamp(min=0).long()
        grid_w = torch.ceil(bin_w).clamp(min=0).long()
        gh, gw = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)

    # Samples on a (K, out_h, out_w, gh, gw) grid padded to the largest RoI's; padding samples get weight 0.
    ph = torch.arange(out_h, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
    pw = torch.arange(out_w, device=device, dtype=dtype).view(1, 1, -1, 1, 1)
    iy = torch.arange(gh, device=device).view(1, 1, 1, -1, 1)
    ix = torch.arange(gw, device=device).view(1, 1, 1, 1, -1)
    col = lambda t: t.view(-1, 1, 1, 1, 1)  # noqa: E731
    ghf, gwf = col(grid_h.clamp(min=1).to(dtype)), col(grid_w.clamp(min=1).to(dtype))
    y = col(start_y) + ph * col(bin_h) + (iy.to(dtype) + 0.5) * col(bin_h) / ghf
    x = col(start_x) + pw * col(bin_w) + (ix.to(dtype) + 0.5) * col(bin_w) / gwf
    if offset is not None:
        y = y + gamma * col(height) * offset[:, 1].unsqueeze(-1).unsqueeze(-1)
        x = x + gamma * col(width) * offset[:, 0].unsqueeze(-1).unsqueeze(-1)
    real = (iy < col(grid_h)) & (ix < col(grid_w))
    count = (grid_h * grid_w).clamp(min=1).to(dtype)

    def axis(coord: Tensor, size: int):
        keep = (coord >= -1.0) & (coord <= size)  # False for NaN
        clamped = coord.clamp(0.0, size - 1)  # the clamp's derivative is zero where it freezes the coordinate
        low = torch.floor(clamped.detach().nan_to_num(nan=0.0)).long()
        frac = clamped - low.to(dtype)
        return keep, low, (low + 1).clamp(max=size - 1), frac

    keep_y, y0, y1, ly = axis(y, H)
    keep_x, x0, x1, lx = axis(x, W)
    scale = (keep_y & keep_x & real).to(dtype) / col(count)
    table = input.permute(0, 2, 3, 1).reshape(n * H * W, c)  # one channel row per pixel
    base = col(rois[:, 0].long()) * (H * W)
    out = None
    for rows_y, wy in ((y0, 1 - ly), (y1, ly)):
        for rows_x, wx in ((x0, 1 - lx), (x1, lx)):
            index = (base + rows_y * W + rows_x).expand(y.shape[0], out_h, out_w, gh, gw).reshape(-1)
            weight = (wy * wx * scale).expand(y.shape[0], out_h, out_w, gh, gw)
            values = table.index_select(0, index).view(K, out_h, out_w, gh, gw, c)
            term = (values * weight.unsqueeze(-1)).sum(dim=(3, 4))
            out = term if out is None else out + term
    return out.permute(0, 3, 1, 2).to(out_dtype)  # (K, C, out_h, out_w)
