"""PyTorch path of deformable RoI pooling: runs on any device.

On the CPU it runs dcn's compiled kernel (csrc/deform_roi_pool_cpu.cpp, built by
:mod:`dcn.ops._cpu_kernel`) when it can be built: the same sampling loops, with the input read
channels-last and the backward split into channel blocks. What follows is the ATen implementation
that runs elsewhere (other devices, or no C++ toolchain), with the same results.

Design
------
Each output bin is a fixed linear combination of input pixels: the mean of its bilinear
samples, each sample the weighted sum of four neighbouring pixels. So a bin is a *bag* of
(pixel index, weight) pairs, and pooling every bin of every RoI is one
``F.embedding_bag(mode="sum", per_sample_weights=...)`` over the input laid out as a
table of pixels, ``(N * H * W, C)`` (channels last). ATen's embedding_bag is built for
exactly this weighted gather-and-sum: on CPU it is SIMD-vectorised over the channel row
and multi-threaded over bags, and on CUDA it is a single kernel. It is several times
faster than sampling with ``grid_sampler_2d`` and reducing, or than a CSR sparse matmul
(prototype on the benchmark's 512 RoIs over C256 50x50, sampling_ratio=2, 2 CPU threads:
~16 ms for the bag sum vs ~180 ms for grid_sampler_2d alone and ~100 ms for the CSR matmul).

The sampling rule is torchvision's ``roi_align`` (``bilinear_interpolate`` in
``roi_align_kernel.cpp``), which differs from grid_sample's zero padding near the border:
a sample with ``y < -1`` or ``y > H`` (or likewise in x) contributes zero; otherwise the
coordinate is clamped to ``[0, H - 1]`` and interpolated, so the border pixel gets full
weight rather than being faded towards zero. Clamping to ``[0, H - 1]`` and taking
``y_high = min(y_low + 1, H - 1)`` is exactly torchvision's two-branch rule.

Backward, hand-written (autograd through gathers would materialise every sample):

* input: the transpose of the forward, again as an embedding_bag — entries sorted by
  pixel, each pixel's bag gathering the weighted output gradients of the bins that read it;
* offset: d bin / d y is the same kind of bag with the weights replaced by the derivative
  of the bilinear weights (zero where the coordinate is clamped or the sample is out of
  range), so ``grad_offset_y = gamma * roi_h * sum_c grad_out * bag_dy(input)``.

Building the entries is elementwise work on the samples; with a fixed ``sampling_ratio`` the
grid is the same for every RoI and the per-coordinate part is done on rows and columns of
samples by broadcasting, with adaptive grids every sample is decoded from a flat index (no
padding to the largest grid). The (roi, bin)-major bag order makes the pooled rows come out as
``(K * out_h * out_w, C)``; one transposing copy gives roi_align's ``(K, C, out_h, out_w)``.

The (pixel, weight) entries are generated per chunk of RoIs holding at most
``_ENTRY_BUDGET`` entries, so memory stays bounded when adaptive sampling
(``sampling_ratio=0``) puts many samples into large RoIs. A single RoI above the budget (a box of
thousands of pixels has millions of samples) is split into pieces of its sample grid (rows, and
columns if need be) whose partial bin sums are added: the work grows with the box as in
roi_align, the memory does not.

Non-finite positions: a sample whose coordinate is NaN (a NaN offset) makes its bin NaN, and that
bin's offset gradient; it adds nothing to the input gradient. An infinite coordinate is a sample
outside the map (zero).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dcn.ops import _cpu_kernel
from dcn.ops._backend import PoolInputs, PoolParams, compute_dtype

# Most (pixel, weight) bag entries built at once: 4 per bilinear sample. 4 Mi entries
# take ~100 MiB of index/weight buffers, and keep each embedding_bag call large.
_ENTRY_BUDGET = 1 << 22


class _RoIGeometry(NamedTuple):
    """Per-RoI sampling geometry, each (K,), following roi_align's arithmetic exactly."""

    batch: Tensor  # int64 image index
    start_x: Tensor
    start_y: Tensor
    width: Tensor  # RoI size in feature coordinates (offsets are scaled by it)
    height: Tensor
    bin_w: Tensor
    bin_h: Tensor
    grid_h: Tensor  # int64 samples per bin along y (0 => the bin has no samples)
    grid_w: Tensor
    count: Tensor  # float samples per bin used as the mean's divisor (>= 1)


def _geometry(
    rois: Tensor, output_size: Sequence[int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> _RoIGeometry:
    out_h, out_w = output_size
    shift = 0.5 if aligned else 0.0
    start_x = rois[:, 1] * spatial_scale - shift
    start_y = rois[:, 2] * spatial_scale - shift
    end_x = rois[:, 3] * spatial_scale - shift
    end_y = rois[:, 4] * spatial_scale - shift
    width = end_x - start_x
    height = end_y - start_y
    if not aligned:  # legacy roi_align: force malformed RoIs to be at least 1x1
        width = width.clamp(min=1.0)
        height = height.clamp(min=1.0)
    bin_w = width / out_w
    bin_h = height / out_h
    if sampling_ratio > 0:
        grid_h = torch.full_like(start_x, sampling_ratio, dtype=torch.int64)
        grid_w = grid_h
    else:
        # ceil(roi / out) as torchvision; a degenerate (negative) RoI gets no samples and
        # pools to zero, as torchvision's sample loop then runs zero times.
        grid_h = torch.ceil(bin_h).clamp(min=0).to(torch.int64)
        grid_w = torch.ceil(bin_w).clamp(min=0).to(torch.int64)
    count = (grid_h * grid_w).clamp(min=1).to(rois.dtype)
    return _RoIGeometry(
        rois[:, 0].to(torch.int64), start_x, start_y, width, height, bin_w, bin_h, grid_h, grid_w, count
    )


class _Piece(NamedTuple):
    """RoIs ``lo:hi`` (all their samples), or, for one RoI above the entry budget (``hi = lo + 1``),
    the samples of its grid rows ``iy[0]:iy[1]`` and columns ``ix[0]:ix[1]`` in every bin."""

    lo: int
    hi: int
    iy: Optional[tuple[int, int]] = None
    ix: Optional[tuple[int, int]] = None

    @property
    def partial(self) -> bool:
        return self.iy is not None


def _chunks(geo: _RoIGeometry, bins: int) -> list[_Piece]:
    """Pieces of work with at most ``_ENTRY_BUDGET`` entries each (at least one sample per bin):
    contiguous RoI ranges, and grid blocks of the RoIs that exceed the budget on their own."""
    grid_h, grid_w = geo.grid_h.tolist(), geo.grid_w.tolist()
    pieces, start, total = [], 0, 0
    for i, (gh, gw) in enumerate(zip(grid_h, grid_w)):
        e = gh * gw * 4 * bins
        if e > _ENTRY_BUDGET:
            if start < i:
                pieces.append(_Piece(start, i))
            per_row = gw * 4 * bins
            rows = max(1, _ENTRY_BUDGET // per_row)
            cols = gw if rows > 1 or per_row <= _ENTRY_BUDGET else max(1, _ENTRY_BUDGET // (4 * bins))
            for a in range(0, gh, rows):
                for c in range(0, gw, cols):
                    pieces.append(_Piece(i, i + 1, (a, min(gh, a + rows)), (c, min(gw, c + cols))))
            start, total = i + 1, 0
            continue
        if total and total + e > _ENTRY_BUDGET:
            pieces.append(_Piece(start, i))
            start, total = i, 0
        total += e
    if start < len(grid_h):
        pieces.append(_Piece(start, len(grid_h)))
    return pieces


class _Bags(NamedTuple):
    """Bag entries of one chunk: bag ``b`` (= roi * out_h * out_w + bin) owns entries
    ``offsets[b]:offsets[b + 1]``; 4 consecutive entries per sample (bilinear corners)."""

    index: Tensor  # (E,) int64 row of the (N*H*W, C) pixel table
    weight: Tensor  # (E,) bilinear weight / count (zero for samples out of range)
    offsets: Tensor  # (bags + 1,) int64
    d_weight_dx: Optional[Tensor]  # (E,) d weight / d x, when gradients are wanted
    d_weight_dy: Optional[Tensor]


def _sample_coordinates(
    geo: _RoIGeometry,
    piece: _Piece,
    offset: Optional[Tensor],
    gamma: float,
    output_size: Sequence[int],
    uniform_grid: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sample coordinates of ``piece`` in bag-entry order (roi, bin, iy, ix).

    Returns (y, x, batch, count), broadcastable against each other. With a uniform grid (a fixed
    ``sampling_ratio``, or a piece of one RoI) they are (R, out_h, out_w | 1, grid_h, 1) /
    (R, out_h | 1, out_w, 1, grid_w) tensors, so the per-coordinate work is done on rows and columns
    of samples only; with adaptive grids every sample is decoded from a flat index, so RoIs with
    different grids need no padding.
    """
    out_h, out_w = output_size
    bins = out_h * out_w
    lo, hi = piece.lo, piece.hi
    device, dtype = geo.start_x.device, geo.start_x.dtype
    if uniform_grid or piece.partial:
        gh, gw = int(geo.grid_h[lo]), int(geo.grid_w[lo])
        (ya, yb), (xa, xb) = piece.iy or (0, gh), piece.ix or (0, gw)
        col = lambda t: t[lo:hi].view(-1, 1, 1, 1, 1)  # noqa: E731
        ar = lambda a, b: torch.arange(a, b, device=device, dtype=dtype)  # noqa: E731
        ph, pw = ar(0, out_h).view(1, -1, 1, 1, 1), ar(0, out_w).view(1, 1, -1, 1, 1)
        iy, ix = ar(ya, yb).view(1, 1, 1, -1, 1), ar(xa, xb).view(1, 1, 1, 1, -1)
        # Same operation order as torchvision's pre_calc_for_bilinear_interpolate, so that
        # without offsets the sample coordinates are bit-identical to roi_align's.
        y = col(geo.start_y) + ph * col(geo.bin_h) + (iy + 0.5) * col(geo.bin_h) / gh
        x = col(geo.start_x) + pw * col(geo.bin_w) + (ix + 0.5) * col(geo.bin_w) / gw
        if offset is not None:
            y = y + gamma * col(geo.height) * offset[lo:hi, 1].unsqueeze(-1).unsqueeze(-1)
            x = x + gamma * col(geo.width) * offset[lo:hi, 0].unsqueeze(-1).unsqueeze(-1)
        return y, x, col(geo.batch), col(geo.count)

    grid_h, grid_w = geo.grid_h[lo:hi], geo.grid_w[lo:hi]
    per_bin = grid_h * grid_w
    per_roi = per_bin * bins
    roi = torch.repeat_interleave(torch.arange(hi - lo, device=device), per_roi)
    local = torch.arange(roi.numel(), device=device) - (torch.cumsum(per_roi, 0) - per_roi)[roi]
    s_r = per_bin[roi]
    bin_ = torch.div(local, s_r, rounding_mode="floor")
    r = local - bin_ * s_r
    gw_r = grid_w[roi]
    iy = torch.div(r, gw_r, rounding_mode="floor")
    ix = r - iy * gw_r
    ph = torch.div(bin_, out_w, rounding_mode="floor")
    pw = bin_ - ph * out_w
    k = roi + lo
    bin_h, bin_w = geo.bin_h[k], geo.bin_w[k]
    y = geo.start_y[k] + ph.to(dtype) * bin_h + (iy.to(dtype) + 0.5) * bin_h / grid_h[roi].to(dtype)
    x = geo.start_x[k] + pw.to(dtype) * bin_w + (ix.to(dtype) + 0.5) * bin_w / gw_r.to(dtype)
    if offset is not None:
        y = y + gamma * geo.height[k] * offset[k, 1, ph, pw]
        x = x + gamma * geo.width[k] * offset[k, 0, ph, pw]
    return y, x, geo.batch[k], geo.count[k]


def _bags(
    geo: _RoIGeometry,
    piece: _Piece,
    offset: Optional[Tensor],
    gamma: float,
    in_hw: tuple[int, int],
    output_size: Sequence[int],
    with_derivatives: bool,
    uniform_grid: bool = False,
) -> _Bags:
    """Bilinear bag entries of ``piece``; offset is (K, 2, out_h, out_w) or None."""
    H, W = in_hw
    bins = output_size[0] * output_size[1]
    dtype = geo.start_x.dtype
    lo, hi = piece.lo, piece.hi
    y, x, batch, count = _sample_coordinates(geo, piece, offset, gamma, output_size, uniform_grid)

    def axis(c: Tensor, size: int):
        """roi_align's rule along one axis: cut outside [-1, size], clamp into [0, size - 1]."""
        keep = (c >= -1.0) & (c <= size)  # False for NaN
        cc = c.clamp(0.0, size - 1).nan_to_num_(nan=0.0)  # a NaN coordinate reads pixel 0 ...
        low = cc.floor()
        frac = cc - low
        low = low.to(torch.int64)
        high = (low + 1).clamp(max=size - 1)
        # The clamp makes the weights constant outside (0, size - 1): zero derivative there.
        slope = keep & (c > 0) & (c < size - 1)
        return keep, low, high, frac, 1.0 - frac, slope

    keep_y, y_low, y_high, ly, hy, slope_y = axis(y, H)
    keep_x, x_low, x_high, lx, hx, slope_x = axis(x, W)
    # Per-axis factors (cheap: rows or columns of samples on a uniform grid); the mean's 1/count
    # and the cut of out-of-range samples are folded into them.
    wy = keep_y.to(dtype) / count
    wx = keep_x.to(dtype)
    # ... with a NaN weight: its bin becomes NaN, as does the bin's offset gradient.
    wy = wy.masked_fill(torch.isnan(y), float("nan"))
    wx = wx.masked_fill(torch.isnan(x), float("nan"))
    row_low = batch * (H * W) + y_low * W
    row_high = batch * (H * W) + y_high * W
    shape = torch.broadcast_shapes(y.shape, x.shape, batch.shape, count.shape)

    def entries(op, pairs, out_dtype) -> Tensor:
        """(..., 4) tensor whose corner j is op(*pairs[j]), written in place (no stack copy)."""
        out = torch.empty(shape + (4,), dtype=out_dtype, device=y.device)
        for j, (a, b) in enumerate(pairs):
            op(a, b, out=out[..., j])
        return out.view(-1)

    index = entries(
        torch.add, ((row_low, x_low), (row_low, x_high), (row_high, x_low), (row_high, x_high)), torch.int64
    )
    hy, ly = hy * wy, ly * wy
    hx, lx = hx * wx, lx * wx
    weight = entries(torch.mul, ((hy, hx), (hy, lx), (ly, hx), (ly, lx)), dtype)
    d_dx = d_dy = None
    if with_derivatives:
        # d(hy * hx)/dy = -hx etc.; the scaled factors already hold 1/count and the cut, and
        # the slope masks zero the derivative where the clamp freezes the coordinate.
        gy = slope_y.to(dtype) * wy
        gx = slope_x.to(dtype) * wx
        d_dy = entries(torch.mul, ((-hx, gy), (-lx, gy), (hx, gy), (lx, gy)), dtype)
        d_dx = entries(torch.mul, ((-hy, gx), (hy, gx), (-ly, gx), (ly, gx)), dtype)

    if piece.partial:
        per_bin = torch.full(
            (1,),
            (piece.iy[1] - piece.iy[0]) * (piece.ix[1] - piece.ix[0]),
            dtype=torch.int64,
            device=index.device,
        )
    else:
        per_bin = geo.grid_h[lo:hi] * geo.grid_w[lo:hi]
    offsets = torch.zeros((hi - lo) * bins + 1, dtype=torch.int64, device=index.device)
    torch.cumsum((4 * per_bin).repeat_interleave(bins), 0, out=offsets[1:])
    return _Bags(index, weight, offsets, d_dx, d_dy)


def _bag_sum(table: Tensor, index: Tensor, offsets: Tensor, weight: Tensor) -> Tensor:
    """out[b] = sum_{e in bag b} weight[e] * table[index[e]]  -> (bags, C)."""
    return F.embedding_bag(
        index, table, offsets, mode="sum", per_sample_weights=weight, include_last_offset=True
    )


def _pixel_table(input: Tensor) -> Tensor:
    """(N, C, H, W) -> (N*H*W, C): one contiguous channel row per pixel."""
    n, c, h, w = input.shape
    table = input.new_empty((n, h * w, c))
    planes = input.reshape(n, c, h * w)
    # One 2-D transpose per image: ATen copies a plain 2-D transpose in cache blocks, several
    # times faster than the generic strided copy a 4-D permute(...).contiguous() takes.
    for i in range(n):
        table[i].copy_(planes[i].t())
    return table.view(n * h * w, c)


def _from_pixel_table(table: Tensor, shape: Sequence[int]) -> Tensor:
    """(N*H*W, C) -> (N, C, H, W), the inverse of :func:`_pixel_table`."""
    n, c, h, w = shape
    out = table.new_empty((n, c, h, w))
    rows = table.view(n, h * w, c)
    for i in range(n):
        out[i].view(c, h * w).copy_(rows[i].t())
    return out


def _fused_kernel(input: Tensor):
    """dcn's compiled CPU kernel for this input, or None (other devices, or no C++ toolchain)."""
    if input.device.type != "cpu":
        return None
    return _cpu_kernel.load()


def deform_roi_pool_forward(x: PoolInputs, pool: PoolParams) -> Tensor:
    """Forward pass; shapes in :class:`~dcn.ops._backend.PoolInputs` -> (K, C, out_h, out_w)."""
    input, rois, offset = x
    output_size, spatial_scale, sampling_ratio, gamma, aligned = pool
    out_h, out_w = output_size
    n, c, H, W = input.shape
    K = rois.shape[0]
    out_dtype = input.dtype
    cdt = compute_dtype(out_dtype)
    if K == 0 or c == 0:
        return input.new_zeros((K, c, out_h, out_w))
    input, rois = input.to(cdt), rois.to(cdt)
    offset = offset.to(cdt) if offset is not None else None
    kernel = _fused_kernel(input)
    if kernel is not None:
        return kernel.deform_roi_pool_forward(
            input, rois, offset, out_h, out_w, spatial_scale, sampling_ratio, gamma, aligned
        ).to(out_dtype)
    geo = _geometry(rois, output_size, spatial_scale, sampling_ratio, aligned)
    table = _pixel_table(input)
    bins = out_h * out_w
    pieces = _chunks(geo, bins)
    rows = None  # (K * bins, C)
    for piece in pieces:
        bags = _bags(geo, piece, offset, gamma, (H, W), output_size, False, sampling_ratio > 0)
        part = _bag_sum(table, bags.index, bags.offsets, bags.weight)
        if len(pieces) == 1:
            rows = part
            break
        if rows is None:
            rows = table.new_zeros((K * bins, c))
        target = rows[piece.lo * bins : piece.hi * bins]
        target.add_(part) if piece.partial else target.copy_(part)
    # (K*bins, C) -> (K, C, out_h, out_w): a transposing copy, as roi_align's layout is channel-major.
    return rows.view(K, out_h, out_w, c).permute(0, 3, 1, 2).contiguous().to(out_dtype)


def deform_roi_pool_backward(
    grad_out: Tensor, x: PoolInputs, pool: PoolParams, needs_input_grad: Sequence[bool] = (True, True)
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Gradients (input, offset), ordered like ``needs_input_grad``; ``None`` where not needed (or
    offset is None)."""
    input, rois, offset = x
    output_size, spatial_scale, sampling_ratio, gamma, aligned = pool
    need_in, need_off = needs_input_grad
    need_off = need_off and offset is not None
    out_h, out_w = output_size
    n, c, H, W = input.shape
    K = rois.shape[0]
    bins = out_h * out_w
    if K == 0 or c == 0 or not (need_in or need_off):
        return (torch.zeros_like(input) if need_in else None, torch.zeros_like(offset) if need_off else None)

    cdt = compute_dtype(input.dtype)
    x, rois_c = input.to(cdt), rois.to(cdt)
    off_c = offset.to(cdt) if offset is not None else None
    kernel = _fused_kernel(x)
    if kernel is not None:
        g_in, g_off = kernel.deform_roi_pool_backward(
            grad_out.to(cdt),
            x,
            rois_c,
            off_c,
            out_h,
            out_w,
            spatial_scale,
            sampling_ratio,
            gamma,
            aligned,
            need_in,
            need_off,
        )
        return (g_in.to(input.dtype) if need_in else None, g_off.to(offset.dtype) if need_off else None)
    geo = _geometry(rois_c, output_size, spatial_scale, sampling_ratio, aligned)
    # (K * bins, C): one gradient row per bag, in the forward's bag order.
    g_rows = grad_out.to(cdt).permute(0, 2, 3, 1).reshape(K * bins, c)
    n_pix = n * H * W
    g_table = None  # (N*H*W, C) input gradient, summed over chunks
    table = _pixel_table(x) if need_off else None
    g_off_rows = x.new_zeros((K * bins, 2)) if need_off else None

    for piece in _chunks(geo, bins):
        lo, hi = piece.lo, piece.hi
        bags = _bags(geo, piece, off_c, gamma, (H, W), output_size, need_off, sampling_ratio > 0)
        g_chunk = g_rows[lo * bins : hi * bins]
        if need_in:
            # Transpose of the forward: sort entries by pixel; each pixel's bag gathers the
            # gradient rows of the bins reading it, weighted by the same bilinear weights.
            bag_of_entry = torch.repeat_interleave(
                torch.arange(g_chunk.shape[0], device=x.device), bags.offsets.diff()
            )
            order = torch.argsort(bags.index, stable=True)
            pix_offsets = torch.zeros(n_pix + 1, dtype=torch.int64, device=x.device)
            torch.cumsum(torch.bincount(bags.index, minlength=n_pix), 0, out=pix_offsets[1:])
            # NaN-position samples (NaN weights) carry no input gradient.
            weight = bags.weight[order].nan_to_num_(nan=0.0)
            g_part = _bag_sum(g_chunk, bag_of_entry[order], pix_offsets, weight)
            g_table = g_part if g_table is None else g_table.add_(g_part)
        if need_off:
            k = torch.arange(lo, hi, device=x.device).repeat_interleave(bins)
            dy = (_bag_sum(table, bags.index, bags.offsets, bags.d_weight_dy) * g_chunk).sum(1)
            dx = (_bag_sum(table, bags.index, bags.offsets, bags.d_weight_dx) * g_chunk).sum(1)
            g_off_rows[lo * bins : hi * bins, 0] += dx * (gamma * geo.width[k])
            g_off_rows[lo * bins : hi * bins, 1] += dy * (gamma * geo.height[k])

    grad_in = grad_off = None
    if need_in:
        grad_in = _from_pixel_table(g_table, (n, c, H, W)).to(input.dtype)
    if need_off:
        grad_off = g_off_rows.view(K, out_h, out_w, 2).permute(0, 3, 1, 2).to(offset.dtype).contiguous()
    return grad_in, grad_off
