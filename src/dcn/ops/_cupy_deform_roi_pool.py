"""CUDA path of deformable RoI pooling: CuPy raw kernels (``cuda/deform_roi_pool.cu``).

Design
------
* The per-RoI geometry (box start, bin size, adaptive grid, offset scale) is computed on the GPU by
  the PyTorch path's own :func:`dcn.ops._torch_deform_roi_pool._geometry` (K elements, a few tensor
  ops), so both backends share roi_align's arithmetic exactly, and the kernels receive it as two
  small tensors: every kernel argument is then a pointer or an integer (``_cupy_runtime``'s contract).
* Boxes and offsets are read in the accumulation type (float32 for half types), whatever the features'
  dtype: under autocast only the features are 16-bit (a bfloat16 box coordinate has 4 px steps at
  512-1024 px). The geometry is computed from ``rois`` converted to that type, and the offsets are
  converted to it (exactly: a 16-bit offset becomes the same value in float32). The offset gradient
  comes back in the offsets' own dtype.
* The kernels receive the batch size N and pool a RoI whose batch index is outside [0, N) to zero
  (no gradient): the op's host-side check of the indices is skipped during CUDA-graph capture.
* ``deform_roi_pool_forward``: one thread per output element (k, c, ph, pw), like torchvision's
  roi_align kernel, averaging the bin's bilinear samples (roi_align's border rule).
* ``deform_roi_pool_backward``: one thread per output element, scattering into ``grad_input`` with
  ``atomicAdd`` and adding the bin's offset derivative into ``grad_offset`` (shared by the C channels
  of a bin, hence atomics too). Gradients accumulate in float32 for half types, converted at the end.

No host synchronisation (so the op can be captured in a CUDA graph) and no copy of the features:
tensors are passed as raw device pointers on ``torch.cuda.current_stream()``. The orchestration
(:func:`deform_roi_pool_forward`, :func:`deform_roi_pool_backward`) takes the kernel launcher as an
argument: the CuPy launcher by default, or the CPU launcher of the test suite (``tests/ops/cuda``),
which runs the same ``.cu`` source compiled by the host C++ compiler over the real grid and block
computed by :func:`launch_config`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from dcn.ops import _cupy_runtime
from dcn.ops._backend import PoolInputs, PoolParams, compute_dtype
from dcn.ops._cupy_runtime import Launch
from dcn.ops._torch_deform_roi_pool import _geometry

__all__ = [
    "SOURCE",
    "launch_config",
    "unavailable_reason",
    "deform_roi_pool_forward",
    "deform_roi_pool_backward",
]

SOURCE = _cupy_runtime.KernelSource(
    "deform_roi_pool.cu", ("deform_roi_pool_forward", "deform_roi_pool_backward")
)

BLOCK_SIZE = 256
# Grid cap; beyond it the kernels' grid-stride loops take over.
MAX_BLOCKS = 1 << 20


def launch_config(threads: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """(grid, block) for ``threads`` output elements (> 0)."""
    if threads <= 0:
        raise ValueError(f"need threads > 0, got {threads}")
    blocks = max(1, min(MAX_BLOCKS, -(-threads // BLOCK_SIZE)))
    return (blocks, 1, 1), (BLOCK_SIZE, 1, 1)


def unavailable_reason() -> Optional[str]:
    """None when the CuPy kernels can run here (including this module's kernels compiling and loading
    on the current device), else why not (e.g. "CuPy is not installed")."""
    return _cupy_runtime.unavailable_reason(SOURCE)


def _roi_tensors(
    rois: Tensor, offset: Optional[Tensor], pool: PoolParams, acc: torch.dtype
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The kernels' view of the RoIs: geometry (K, 6) [start_x, start_y, bin_w, bin_h, shift_x,
    shift_y] in ``acc``, roi_index (K, 3) int64 [batch, grid_h, grid_w], and offset
    (K, 2, out_h, out_w) in ``acc`` (contiguous) or None."""
    output_size, spatial_scale, sampling_ratio, gamma, aligned = pool
    geo = _geometry(rois.to(acc), output_size, spatial_scale, sampling_ratio, aligned)
    geometry = torch.stack(
        (geo.start_x, geo.start_y, geo.bin_w, geo.bin_h, gamma * geo.width, gamma * geo.height), 1
    ).contiguous()
    roi_index = torch.stack((geo.batch, geo.grid_h, geo.grid_w), 1).contiguous()
    offset = offset.to(acc).contiguous() if offset is not None else None
    return geometry, roi_index, offset


def deform_roi_pool_forward(x: PoolInputs, pool: PoolParams, launch: Optional[Launch] = None) -> Tensor:
    """Forward pass; shapes in :class:`~dcn.ops._backend.PoolInputs` -> (K, C, out_h, out_w). ``launch``
    runs the kernels: CuPy on the input's CUDA device by default (the tests pass a CPU launcher)."""
    input, rois, offset = x
    out_h, out_w = pool.output_size
    launch = _cupy_runtime.cupy_launcher(SOURCE, input.device) if launch is None else launch
    n, c, h, w = input.shape
    k = rois.shape[0]
    out = input.new_empty((k, c, out_h, out_w))
    if out.numel() == 0:
        return out
    input = input.contiguous()
    geometry, roi_index, offset = _roi_tensors(rois, offset, pool, compute_dtype(input.dtype))
    grid, block = launch_config(out.numel())
    launch(
        "deform_roi_pool_forward",
        input.dtype,
        grid,
        block,
        (input, geometry, roi_index, offset, out, k, n, c, h, w, out_h, out_w),
    )
    return out


def deform_roi_pool_backward(
    grad_out: Tensor,
    x: PoolInputs,
    pool: PoolParams,
    needs_input_grad: Sequence[bool] = (True, True),
    launch: Optional[Launch] = None,
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Gradients (input (N, C, H, W), offset (K, 2, out_h, out_w)), each in its tensor's dtype;
    ``None`` where not needed (or offset is None). A RoI whose batch index is outside [0, N) adds no
    gradient. ``launch`` as in :func:`deform_roi_pool_forward`."""
    input, rois, offset = x
    out_h, out_w = pool.output_size
    launch = _cupy_runtime.cupy_launcher(SOURCE, input.device) if launch is None else launch
    need_in, need_off = needs_input_grad
    need_off = bool(need_off) and offset is not None
    n, c, h, w = input.shape
    k = rois.shape[0]
    dtype, acc = input.dtype, compute_dtype(input.dtype)
    g_in = torch.zeros(input.shape, dtype=acc, device=input.device) if need_in else None
    g_off = torch.zeros(offset.shape, dtype=acc, device=input.device) if need_off else None
    threads = k * c * out_h * out_w
    if threads > 0 and (need_in or need_off):
        geometry, roi_index, offset_acc = _roi_tensors(rois, offset, pool, acc)
        grid, block = launch_config(threads)
        launch(
            "deform_roi_pool_backward",
            dtype,
            grid,
            block,
            (
                grad_out.contiguous(),
                input.contiguous(),
                geometry,
                roi_index,
                offset_acc,
                g_in,
                g_off,
                k,
                n,
                c,
                h,
                w,
                out_h,
                out_w,
            ),
        )
    return (
        g_in.to(dtype) if g_in is not None else None,
        g_off.to(offset.dtype) if g_off is not None else None,
    )
