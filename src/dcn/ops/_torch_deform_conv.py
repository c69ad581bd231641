"""PyTorch path of deformable convolution: runs on any device, no compiled code of ours.

Design
------
Deformable convolution is a bilinear *sampling* step followed by a dense GEMM:

    cols[n, c, k, l] = mask[n, g(c), k, l] * x_bilinear(n, c, y(k, l), x(k, l))
    out[n, :, l]     = weight.view(C_out, C_in * K) @ cols[n].view(C_in * K, L) + bias

The sampling step is done by ATen's fused ``grid_sampler_2d`` kernel (zero padding,
bilinear): it computes the four corner weights once per sample point and reads
every channel with them, never materialising four gathered copies; on CPU it is
SIMD-vectorised and multi-threaded, and it has its own hand-written backward that
returns the input gradient (scatter) and the coordinate gradient in one pass.
Zero padding reproduces torchvision's convention exactly: a sample counts only
when ``-1 < y < H`` and ``-1 < x < W`` and corners outside the image read as zero
(outside that window all four corners are outside, so the value is zero too).

Offsets are turned into grid_sample's normalised coordinates with
``align_corners=False`` (``g = (2 * x + 1) / W - 1``), which is well defined for
W = 1 and exactly invertible; the coordinate gradient is mapped back by the
chain rule (``d/dx = d/dg * 2 / W``).

Memory is bounded by processing the batch in chunks whose column buffer holds at
most ``_COLUMN_BUDGET`` elements; the backward recomputes the columns of a
chunk instead of keeping them from the forward (as torchvision does), so the
op's memory footprint does not grow with the batch.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Largest column buffer (elements) a chunk may allocate: 16 Mi elements = 64 MiB in
# float32. Chosen to stay below torchvision's own column buffer (up to 32 images)
# on every shape of benchmarks/ops.py while keeping GEMMs large enough to be efficient.
_COLUMN_BUDGET = 1 << 24

_BILINEAR = 0  # grid_sampler interpolation_mode
_ZEROS = 0  # grid_sampler padding_mode


def _chunks(batch: int, per_image: int) -> list[tuple[int, int]]:
    """Split ``range(batch)`` into contiguous (start, stop) chunks within the column budget."""
    step = max(1, _COLUMN_BUDGET // max(1, per_image))
    return [(s, min(batch, s + step)) for s in range(0, batch, step)]


def _sampling_grid(
    offset: Tensor,
    in_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    offset_groups: int,
) -> Tensor:
    """Normalised sampling grid for ``grid_sampler_2d``.

    Args:
        offset: (n, 2 * G * kh * kw, H_out, W_out), channel 2k is dy and 2k+1 dx of kernel point k.

    Returns:
        grid: (n * G, kh * kw, H_out * W_out, 2) with (x, y) in grid_sample's
        ``align_corners=False`` normalised coordinates.
    """
    n, _, h_out, w_out = offset.shape
    kh, kw = kernel
    H, W = in_hw
    dtype, device = offset.dtype, offset.device
    # Regular sampling positions p0 + p_k, shaped to broadcast against (n, G, K, H_out, W_out).
    ky = torch.arange(kh, device=device, dtype=dtype).mul_(dilation[0]).repeat_interleave(kw)
    kx = torch.arange(kw, device=device, dtype=dtype).mul_(dilation[1]).repeat(kh)
    oy = torch.arange(h_out, device=device, dtype=dtype).mul_(stride[0]).sub_(padding[0])
    ox = torch.arange(w_out, device=device, dtype=dtype).mul_(stride[1]).sub_(padding[1])
    base_y = ky.view(-1, 1, 1) + oy.view(1, -1, 1)  # (K, H_out, 1)
    base_x = kx.view(-1, 1, 1) + ox.view(1, 1, -1)  # (K, 1, W_out)

    off = offset.reshape(n, offset_groups, kh * kw, 2, h_out, w_out)
    y = off[:, :, :, 0] + base_y
    x = off[:, :, :, 1] + base_x
    # align_corners=False: pixel centre i sits at g = (2 i + 1) / size - 1.
    gx = x.mul_(2.0 / W).add_(1.0 / W - 1.0)
    gy = y.mul_(2.0 / H).add_(1.0 / H - 1.0)
    grid = torch.stack((gx, gy), dim=-1)  # (n, G, K, H_out, W_out, 2)
    return grid.view(n * offset_groups, kh * kw, h_out * w_out, 2)


def _sample_columns(x: Tensor, grid: Tensor, offset_groups: int) -> Tensor:
    """Bilinearly sample every input channel at the grid: (n, C, H, W) -> (n, C, K, L)."""
    n, c, h, w = x.shape
    xg = x.reshape(n * offset_groups, c // offset_groups, h, w)
    cols = torch.grid_sampler_2d(xg, grid, _BILINEAR, _ZEROS, False)  # (n*G, C/G, K, L)
    return cols.view(n, c, grid.shape[1], grid.shape[2])


def deform_conv2d_forward(
    input: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    """Forward pass; arguments already validated by :func:`dcn.ops.deform_conv2d`.

    Shapes: input (N, C_in, H, W), offset (N, 2*G*K, H_out, W_out), mask (N, G*K, H_out, W_out)
    or None, weight (C_out, C_in/groups, kh, kw), bias (C_out,) or None -> (N, C_out, H_out, W_out).
    """
    n, c_in, H, W = input.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = offset.shape[-2:]
    K, L = kh * kw, h_out * w_out
    out = input.new_empty((n, c_out, h_out, w_out))
    if n == 0:
        return out
    w_g = weight.reshape(groups, c_out // groups, -1)  # (groups, C_out/groups, C_in/groups * K)
    for s, e in _chunks(n, c_in * K * L):
        grid = _sampling_grid(offset[s:e], (H, W), (kh, kw), stride, padding, dilation, offset_groups)
        cols = _sample_columns(input[s:e], grid, offset_groups)  # (b, C_in, K, L)
        if mask is not None:
            b = e - s
            cols = cols.view(b, offset_groups, c_in // offset_groups, K, L)
            cols.mul_(mask[s:e].reshape(b, offset_groups, 1, K, L))
        cols = cols.view(e - s, groups, -1, L)  # (b, groups, C_in/groups * K, L)
        res = torch.matmul(w_g, cols)  # (b, groups, C_out/groups, L)
        out[s:e] = res.view(e - s, c_out, h_out, w_out)
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def deform_conv2d_backward(
    grad_out: Tensor,
    input: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    offset_groups: int,
    needs_input_grad: Sequence[bool] = (True, True, True, True, True),
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients (input, offset, mask, weight, bias); ``None`` where not needed or not applicable.

    ``needs_input_grad`` is ordered like the return value.
    """
    need_in, need_off, need_mask, need_w, need_b = needs_input_grad
    need_mask = need_mask and mask is not None
    need_b = need_b and bias is not None
    n, c_in, H, W = input.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = offset.shape[-2:]
    K, L = kh * kw, h_out * w_out
    G = offset_groups
    cg = c_in // G

    grad_in = torch.zeros_like(input) if need_in else None
    grad_off = offset.new_empty(offset.shape) if need_off else None
    grad_mask = torch.empty_like(mask) if need_mask else None
    grad_w = torch.zeros_like(weight) if need_w else None
    grad_b = grad_out.sum(dim=(0, 2, 3)) if need_b else None
    if n == 0 or not (need_in or need_off or need_mask or need_w):
        return grad_in, grad_off, grad_mask, grad_w, grad_b

    w_g = weight.reshape(groups, c_out // groups, -1)
    gw_g = grad_w.view(groups, c_out // groups, -1) if need_w else None
    need_sampling_grad = need_in or need_off
    for s, e in _chunks(n, c_in * K * L):
        b = e - s
        x = input[s:e]
        go = grad_out[s:e].reshape(b, groups, c_out // groups, L)
        grid = _sampling_grid(offset[s:e], (H, W), (kh, kw), stride, padding, dilation, G)
        # Columns are recomputed rather than stored by the forward: memory stays bounded.
        cols = None
        if need_w or need_mask:
            cols = _sample_columns(x, grid, G).view(b, G, cg, K, L)
        if need_mask:
            # d out / d mask = sum over the group's channels of (W^T grad_out) * unmasked columns.
            gcols_unmasked = torch.matmul(w_g.transpose(1, 2), go).view(b, G, cg, K, L)
            grad_mask[s:e] = (gcols_unmasked * cols).sum(dim=2).view(b, G * K, h_out, w_out)
        if need_w:
            if mask is not None:
                cols.mul_(mask[s:e].reshape(b, G, 1, K, L))
            cols_g = cols.view(b, groups, -1, L)
            # sum over the chunk's images of grad_out @ cols^T, as one batched GEMM per group.
            gw_g += torch.einsum("bgol,bgcl->goc", go, cols_g)
        del cols
        if not need_sampling_grad:
            continue
        if need_mask:
            gcols = gcols_unmasked.mul_(mask[s:e].reshape(b, G, 1, K, L))
        else:
            gcols = torch.matmul(w_g.transpose(1, 2), go).view(b, G, cg, K, L)
            if mask is not None:
                gcols.mul_(mask[s:e].reshape(b, G, 1, K, L))
        gcols = gcols.view(b * G, cg, K, L)
        xg = x.reshape(b * G, cg, H, W)
        gx, ggrid = torch.ops.aten.grid_sampler_2d_backward(
            gcols, xg, grid, _BILINEAR, _ZEROS, False, [need_in, True]
        )
        if need_in:
            grad_in[s:e] = gx.view(b, c_in, H, W)
        if need_off:
            # grid holds (x, y) normalised with g = (2p + 1)/size - 1, so d/dp = d/dg * 2/size.
            ggrid = ggrid.view(b, G, K, h_out, w_out, 2)
            go_off = grad_off[s:e].view(b, G, K, 2, h_out, w_out)
            go_off[:, :, :, 0] = ggrid[..., 1] * (2.0 / H)
            go_off[:, :, :, 1] = ggrid[..., 0] * (2.0 / W)
    return grad_in, grad_off, grad_mask, grad_w, grad_b
