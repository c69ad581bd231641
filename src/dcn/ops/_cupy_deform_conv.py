"""CUDA path of deformable convolution: CuPy raw kernels (``cuda/deform_conv.cu``) + cuBLAS GEMMs.

Design
------
Deformable convolution is a bilinear *sampling* step followed by a dense GEMM per conv group::

    cols[c, k, b, l] = mask[b, g(c), k, l] * bilinear(input[b, c], p_l + p_k + offset[b, g(c), k, l])
    out[b, grp]      = weight[grp].view(C_out/groups, C_in/groups * K) @ cols[grp][:, b] + bias

The column buffer keeps the batch *inside* (``(C_in * K, b * L)``, as torchvision's): each conv
group is then one large GEMM over the whole batch chunk, and the weight gradient
``grad_out @ cols^T`` reads the buffer in place (a transposed cuBLAS operand), never copying it.
Only ``out`` / ``grad_out`` (C_out * b * L elements, K times fewer than the columns when
C_out = C_in) are permuted between (b, C_out, L) and (C_out, b, L).

Kernels (templates over float32, float64, float16, bfloat16; half types compute in float32):

* ``deform_conv2d_im2col`` — the sampling step. One thread per sample point (b, offset group, k, l)
  and chunk of the group's channels: the position, four corners and weights are computed once and
  reused for every channel of the chunk (torchvision's im2col recomputes them per channel).
* ``deform_conv2d_backward_sample`` — one fused pass for the input, offset and mask gradients from
  ``grad_cols = W^T @ grad_out``. Per sample point and channel chunk, a thread scatters into
  ``grad_input`` with ``atomicAdd`` and accumulates the offset (d bilinear / dy, dx) and mask
  gradients over its channels in registers, writing them once. torchvision instead runs one thread
  per *offset channel* (dy and dx of a point in two threads, each re-reading the group's columns
  and input corners) plus a separate col2im pass for the input gradient. Gradients are accumulated
  in float32 buffers for half types (atomics on 16-bit types lose too much precision), converted at
  the end.
* GEMMs (``W @ cols``, ``W^T @ grad_out``, ``grad_out @ cols^T``) go through ``torch.matmul`` /
  ``bmm`` (cuBLAS, float32 accumulation for half types). For half types the weight-gradient GEMM
  (``b * L`` products per batch chunk, the chunks summed in float32) also writes float32
  (``torch.bmm(..., out_dtype=torch.float32)``): a 16-bit result could overflow (float16) or round
  away what a later chunk cancels (bfloat16).

Sampling conventions are torchvision's (equal to rounding in float64; the CPU tests check it): zero
padding, a sample counts when ``-1 < y < H`` and ``-1 < x < W``, and position derivatives are
one-sided from above at integer coordinates, including at exactly -1 (torchvision issue 6885; the
original DCN code returns 0 there). The PyTorch backend returns 0 at exactly -1 (its validity window
is open, like the original DCN code), so the two backends differ at those measure-zero points only.

The batch is processed in chunks whose column buffer holds at most :data:`COLUMN_BUDGET` elements
(one buffer, reused by every chunk and, in the backward, first for ``grad_cols`` and then for the
recomputed columns of the weight gradient), so memory does not grow with the batch. Indices are
64-bit in the kernels; a single image's columns may exceed 2^31 elements. The backward recomputes
the columns rather than reusing the forward's: it is a separate op
(``dcn::deform_conv2d_backward``) that receives the op's inputs only.

Zero copy, no host synchronisation: tensors are passed as raw device pointers, kernels are launched
on ``torch.cuda.current_stream()``, all buffers come from PyTorch's caching allocator. That also makes
the op capturable in CUDA graphs.

:func:`deform_conv2d_forward` and :func:`deform_conv2d_backward` take the kernel launcher as an
optional argument: the CuPy launcher by default, or the CPU launcher of the test suite
(``tests/ops/cuda``), which compiles the same ``.cu`` source with the host C++ compiler and runs the
real grid and block sizes computed by :func:`sample_launch_config` serially. The CPU tests therefore
exercise this very module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from dcn.ops import _cupy_runtime
from dcn.ops._backend import ConvInputs, ConvParams, compute_dtype
from dcn.ops._cupy_runtime import Launch

__all__ = [
    "SOURCE",
    "COLUMN_BUDGET",
    "LaunchConfig",
    "sample_launch_config",
    "unavailable_reason",
    "deform_conv2d_forward",
    "deform_conv2d_backward",
]

SOURCE = _cupy_runtime.KernelSource(
    "deform_conv.cu", ("deform_conv2d_im2col", "deform_conv2d_backward_sample")
)

# Largest column buffer (elements) per batch chunk: 32 Mi elements = 128 MiB in float32. Large
# enough for efficient GEMMs on every benchmark shape, small next to the activations of a network.
COLUMN_BUDGET = 1 << 25

BLOCK_SIZE = 256
# Grid cap; beyond it the kernels' grid-stride loops take over (keeps launches valid on any size).
MAX_BLOCKS = 1 << 20
# Aim for about this many threads (an H100 holds ~270k resident threads) by splitting each offset
# group's channels into chunks when there are few sample points.
TARGET_THREADS = 1 << 18


@dataclass(frozen=True)
class LaunchConfig:
    grid: Tuple[int, int, int]
    block: Tuple[int, int, int]
    channels_per_thread: int
    chunks: int  # channel chunks per offset group (ceil(group_channels / channels_per_thread))


def sample_launch_config(points: int, group_channels: int) -> LaunchConfig:
    """Grid, block and channel chunking of the sampling kernels.

    Args:
        points: number of sample points, ``batch * offset_groups * kh * kw * H_out * W_out`` (> 0).
        group_channels: input channels per offset group (> 0).
    """
    if points <= 0 or group_channels <= 0:
        raise ValueError(f"need points > 0 and group_channels > 0, got {points}, {group_channels}")
    wanted_chunks = min(group_channels, max(1, -(-TARGET_THREADS // points)))
    per_thread = -(-group_channels // wanted_chunks)
    chunks = -(-group_channels // per_thread)
    threads = points * chunks
    blocks = max(1, min(MAX_BLOCKS, -(-threads // BLOCK_SIZE)))
    return LaunchConfig((blocks, 1, 1), (BLOCK_SIZE, 1, 1), per_thread, chunks)


def unavailable_reason() -> Optional[str]:
    """None when the CuPy kernels can run here, else why not (e.g. "CuPy is not installed"); the
    check compiles and loads this op's module on the current device (once per process)."""
    return _cupy_runtime.unavailable_reason(SOURCE)


def _batch_chunks(batch: int, per_image: int) -> list[tuple[int, int]]:
    step = max(1, COLUMN_BUDGET // max(1, per_image))
    return [(s, min(batch, s + step)) for s in range(0, batch, step)]


class _Geometry:
    """Shapes of one call and the integer arguments shared by both kernels."""

    def __init__(self, x: ConvInputs, conv: ConvParams) -> None:
        self.n, self.c_in, self.h, self.w = x.input.shape
        self.c_out, _, self.kh, self.kw = x.weight.shape
        self.h_out, self.w_out = x.offset.shape[-2:]
        self.K, self.L = self.kh * self.kw, self.h_out * self.w_out
        self.groups, self.G = conv.groups, conv.offset_groups
        self.stride, self.padding, self.dilation = (
            tuple(conv.stride),
            tuple(conv.padding),
            tuple(conv.dilation),
        )

    def kernel_ints(self, batch: int, channels_per_thread: int) -> tuple[int, ...]:
        return (
            batch,
            self.c_in,
            self.h,
            self.w,
            self.h_out,
            self.w_out,
            self.kh,
            self.kw,
            self.stride[0],
            self.stride[1],
            self.padding[0],
            self.padding[1],
            self.dilation[0],
            self.dilation[1],
            self.G,
            channels_per_thread,
        )

    def launch_config(self, batch: int) -> LaunchConfig:
        return sample_launch_config(batch * self.G * self.K * self.L, self.c_in // self.G)


def _im2col(
    launch: Launch, geo: _Geometry, x: Tensor, off: Tensor, m: Optional[Tensor], cols: Tensor
) -> None:
    """Fill ``cols`` (C_in * K * b * L elements, layout (C_in, K, b, L)) with the (masked) samples
    of the b images of ``x``."""
    b = x.shape[0]
    cfg = geo.launch_config(b)
    launch(
        "deform_conv2d_im2col",
        x.dtype,
        cfg.grid,
        cfg.block,
        (x, off, m, cols, *geo.kernel_ints(b, cfg.channels_per_thread)),
    )


def _accumulate_weight_grad(g_w: Tensor, grad_out: Tensor, cols: Tensor) -> None:
    """``g_w += grad_out @ cols^T`` per conv group, the weight gradient of one batch chunk.

    Shapes: g_w (groups, C_out/groups, C_in/groups * K) in the accumulation dtype, grad_out
    (groups, C_out/groups, b * L) and cols (groups, C_in/groups * K, b * L) in the input dtype.
    For half types the product is formed in float32 and written as float32.
    """
    cols_t = cols.transpose(1, 2)  # a transposed cuBLAS operand: no copy
    if grad_out.dtype == g_w.dtype:
        g_w.baddbmm_(grad_out, cols_t)
    elif g_w.is_cuda:  # cuBLAS: 16-bit operands, float32 accumulation and output
        g_w += torch.bmm(grad_out, cols_t, torch.float32)
    else:  # no 16-bit-in, float32-out GEMM off CUDA (the host-kernel tests): float32 operands
        g_w.baddbmm_(grad_out.float(), cols_t.float())


def deform_conv2d_forward(x: ConvInputs, conv: ConvParams, launch: Optional[Launch] = None) -> Tensor:
    """Forward pass; shapes in :class:`~dcn.ops._backend.ConvInputs` -> (N, C_out, H_out, W_out).
    ``launch`` runs the kernels: CuPy on the input's CUDA device by default (the tests pass a CPU
    launcher that runs the same source)."""
    input, offset, mask, weight, bias = x
    groups = conv.groups
    launch = _cupy_runtime.cupy_launcher(SOURCE, input.device) if launch is None else launch
    geo = _Geometry(x, conv)
    input, offset, weight = input.contiguous(), offset.contiguous(), weight.contiguous()
    mask = mask.contiguous() if mask is not None else None
    out = input.new_empty((geo.n, geo.c_out, geo.h_out, geo.w_out))
    if out.numel() == 0:
        return out
    per_image = geo.c_in * geo.K * geo.L
    chunks = _batch_chunks(geo.n, per_image)
    col_buffer = input.new_empty((chunks[0][1] - chunks[0][0]) * per_image)
    c_out_g = geo.c_out // groups
    w_g = weight.view(groups, c_out_g, -1)  # (groups, C_out/groups, C_in/groups * K)
    for s, e in chunks:
        b = e - s
        cols = col_buffer[: b * per_image]
        _im2col(launch, geo, input[s:e], offset[s:e], mask[s:e] if mask is not None else None, cols)
        cols = cols.view(groups, -1, b * geo.L)
        if b == 1:  # batch-inside and batch-outside layouts coincide: write the output directly
            torch.matmul(w_g, cols, out=out[s:e].view(groups, c_out_g, geo.L))
            continue
        res = torch.matmul(w_g, cols)  # (groups, C_out/groups, b * L)
        out[s:e].view(b, groups, c_out_g, geo.L).copy_(
            res.view(groups, c_out_g, b, geo.L).permute(2, 0, 1, 3)
        )
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def deform_conv2d_backward(
    grad_out: Tensor,
    x: ConvInputs,
    conv: ConvParams,
    needs_input_grad: Sequence[bool] = (True,) * 5,
    launch: Optional[Launch] = None,
) -> Tuple[Optional[Tensor], ...]:
    """Gradients ordered like ``x`` (and ``needs_input_grad``); ``None`` where not needed or not
    applicable. ``launch`` as in :func:`deform_conv2d_forward`."""
    input, offset, mask, weight, bias = x
    groups = conv.groups
    launch = _cupy_runtime.cupy_launcher(SOURCE, input.device) if launch is None else launch
    need_in, need_off, need_mask, need_w, need_b = needs_input_grad
    need_mask = bool(need_mask) and mask is not None
    need_b = bool(need_b) and bias is not None
    geo = _Geometry(x, conv)
    dtype, acc = input.dtype, compute_dtype(input.dtype)
    grad_out = grad_out.contiguous()
    input, offset, weight = input.contiguous(), offset.contiguous(), weight.contiguous()
    mask = mask.contiguous() if mask is not None else None

    grad_b = grad_out.sum(dim=(0, 2, 3), dtype=acc).to(dtype) if need_b else None
    empty = geo.n == 0 or geo.c_out == 0
    # Input gradient is scattered with atomics: start from zero. Offset/mask gradients are stored
    # directly unless channels are split across threads (then atomically added): see below.
    g_in = torch.zeros(input.shape, dtype=acc, device=input.device) if need_in else None
    g_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    g_off = g_mask = None
    sampling = need_in or need_off or need_mask
    if empty or not (sampling or need_w):  # nothing for the kernels (empty output: zero grads)
        g_off = torch.zeros(offset.shape, dtype=acc, device=offset.device) if need_off else None
        g_mask = torch.zeros(mask.shape, dtype=acc, device=mask.device) if need_mask else None
    else:
        per_image = geo.c_in * geo.K * geo.L
        chunks = _batch_chunks(geo.n, per_image)
        # Offset/mask grads are atomically added when a launch splits a group's channels over
        # several threads (they must then start at zero), else stored once per sample point.
        split = any(geo.launch_config(e - s).chunks > 1 for s, e in chunks)
        alloc = torch.zeros if split else torch.empty
        g_off = alloc(offset.shape, dtype=acc, device=offset.device) if need_off else None
        g_mask = alloc(mask.shape, dtype=acc, device=mask.device) if need_mask else None
        col_buffer = input.new_empty((chunks[0][1] - chunks[0][0]) * per_image)
        c_out_g = geo.c_out // groups
        w_g = weight.view(groups, c_out_g, -1)
        g_w_g = g_w.view(groups, c_out_g, -1) if need_w else None
        for s, e in chunks:
            b = e - s
            cols = col_buffer[: b * per_image].view(groups, -1, b * geo.L)  # (groups, Cg*K, b*L)
            # grad_out in the columns' batch-inside order: (groups, C_out/groups, b * L).
            go = (
                grad_out[s:e]
                .view(b, groups, c_out_g, geo.L)
                .permute(1, 2, 0, 3)
                .reshape(groups, c_out_g, b * geo.L)
            )
            m = mask[s:e] if mask is not None else None
            if sampling:
                torch.matmul(w_g.transpose(1, 2), go, out=cols)  # grad_cols
                cfg = geo.launch_config(b)
                launch(
                    "deform_conv2d_backward_sample",
                    dtype,
                    cfg.grid,
                    cfg.block,
                    (
                        input[s:e],
                        offset[s:e],
                        m,
                        cols,
                        g_in[s:e] if need_in else None,
                        g_off[s:e] if need_off else None,
                        g_mask[s:e] if need_mask else None,
                        *geo.kernel_ints(b, cfg.channels_per_thread),
                    ),
                )
            if need_w:
                # Recompute the (masked) columns into the same buffer; grad_cols is consumed.
                _im2col(launch, geo, input[s:e], offset[s:e], m, cols)
                _accumulate_weight_grad(g_w_g, go, cols)

    def cast(t: Optional[Tensor]) -> Optional[Tensor]:
        return t.to(dtype) if t is not None else None

    return cast(g_in), cast(g_off), cast(g_mask), cast(g_w), grad_b
