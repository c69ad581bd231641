"""PyTorch path of deformable convolution: runs on any device.

On the CPU (float32, float64, bfloat16, float16) it runs dcn's compiled kernel
(csrc/deform_conv_cpu.cpp, built on first use by :mod:`dcn.ops._cpu_kernel`): the same algorithm
as below, with the sampling written straight into the GEMM operand by vectorised, multithreaded
loops and the GEMMs on oneDNN. What follows describes the ATen implementation that runs elsewhere
(other devices, or no C++ toolchain); both give the same results.

Design
------
Deformable convolution is a bilinear *sampling* step followed by a dense GEMM:

    cols[n, l, k, c] = mask[n, g(c), k, l] * x_bilinear(n, c, y(k, l), x(k, l))
    out[n, l, :]     = cols[n, l].view(K * C_in) @ weight'  (+ bias)

**Forward sampling** gathers contiguous channel rows of a channels-last, zero-padded copy of
the input. Each sample point of offset group g is one "bag" of four table rows (its bilinear
corners) weighted by the bilinear weights times the DCN v2 mask, and ATen's fused
``embedding_bag(mode="sum", per_sample_weights=...)`` computes the weighted sum of the four
rows in one pass, without materialising four gathered copies. The columns come out
channels-last, ``(N * L, K * C_in)``, which is exactly the left operand of one large GEMM.

**Backward** recomputes the columns of each chunk (as torchvision does) instead of storing
them, then: ``grad_weight`` by one GEMM; the column gradient ``weight^T @ grad_out`` by one
GEMM; and input *and* offset gradients in a single pass of ATen's hand-written fused
``grid_sampler_2d_backward`` (bilinear, zero padding), which scatters into the input and
reduces the coordinate gradient over channels. The mask gradient is the channel-sum of the
column gradient times the unmasked columns.

Zero padding reproduces torchvision's convention exactly: a sample counts only when
``-1 < y < H`` and ``-1 < x < W`` and corners outside the image read as zero. For
``grid_sampler_2d_backward``, offsets are mapped to its normalised ``align_corners=False``
coordinates (``g = (2 * x + 1) / W - 1``, defined for W = 1) and its coordinate gradient back
by the chain rule (``d/dx = d/dg * 2 / W``). Outside the valid window all four corners are
outside the image, so both conventions give zero value and zero gradient there.

Memory is bounded by processing the batch in chunks whose column buffer holds at most
``_COLUMN_BUDGET`` elements, so the op's footprint does not grow with the batch.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dcn.ops import _cpu_kernel
from dcn.ops._backend import ConvInputs, ConvParams

# Largest column buffer (elements) a chunk may allocate: 1 Mi elements = 4 MiB in float32 (the
# ATen path, and the compiled kernel's chunk-wide strategy; its per-thread-tile strategy holds
# ~1 MiB of columns per thread). Small enough to stay below torchvision's own column buffer (which
# holds up to 32 images) on every benchmark shape and to stay in cache between the sampling and
# the GEMM, large enough to keep the GEMMs efficient.
_COLUMN_BUDGET = 1 << 20

# Strategy knobs of the compiled CPU kernel, 0 letting it pick (tests force each): the column order
# of its GEMMs (1: (tap, channel), 2: (channel, tap)) and whether tasks multiply their own column
# tiles (1: per-thread tiles, 2: chunk-wide GEMMs).
_COLUMN_ORDER = 0
_FUSE = 0

_BILINEAR = 0  # grid_sampler interpolation_mode
_ZEROS = 0  # grid_sampler padding_mode


def _chunk_images(per_image: int) -> int:
    """Images per chunk: as many as the column budget holds, at least one."""
    return max(1, _COLUMN_BUDGET // max(1, per_image))


def _chunks(batch: int, per_image: int) -> list[tuple[int, int]]:
    """Split ``range(batch)`` into contiguous (start, stop) chunks within the column budget."""
    step = _chunk_images(per_image)
    return [(s, min(batch, s + step)) for s in range(0, batch, step)]


def _kernel_conf(stride, padding, dilation, groups: int, offset_groups: int, per_image: int) -> tuple:
    """What the compiled kernel's forward and backward take after the tensors: the geometry, the
    images per chunk (``per_image`` column elements each) and the strategy knobs."""
    return (
        list(stride),
        list(padding),
        list(dilation),
        groups,
        offset_groups,
        _chunk_images(per_image),
        _COLUMN_ORDER,
        _FUSE,
    )


def _fused_kernel(input: Tensor):
    """dcn's compiled CPU kernel (:mod:`dcn.ops._cpu_kernel`) for this input, or None (other
    devices, or no C++ toolchain: the ATen path below runs instead)."""
    if input.device.type != "cpu" or input.dtype not in _cpu_kernel.DTYPES:
        return None
    return _cpu_kernel.load()


def _sample_positions(
    offset: Tensor,
    kernel: tuple[int, int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    offset_groups: int,
) -> tuple[Tensor, Tensor]:
    """Absolute sampling coordinates p0 + p_k + Δp_k, in bag order.

    Args:
        offset: (n, 2 * G * kh * kw, H_out, W_out); channel 2k is dy and 2k+1 dx of kernel point k.

    Returns:
        (y, x), each a contiguous (n, H_out, W_out, kh * kw, G) tensor of input pixel coordinates.
        This (n, l, k, g) order is the row order of the channels-last column matrix; keeping it
        contiguous matters: the elementwise passes below run several times faster than on
        permuted views.
    """
    n, _, h_out, w_out = offset.shape
    kh, kw = kernel
    K, G = kh * kw, offset_groups
    dtype, device = offset.dtype, offset.device
    ky = torch.arange(kh, device=device, dtype=dtype).mul_(dilation[0]).repeat_interleave(kw)
    kx = torch.arange(kw, device=device, dtype=dtype).mul_(dilation[1]).repeat(kh)
    oy = torch.arange(h_out, device=device, dtype=dtype).mul_(stride[0]).sub_(padding[0])
    ox = torch.arange(w_out, device=device, dtype=dtype).mul_(stride[1]).sub_(padding[1])
    # (n, G, K, 2, Ho, Wo) -> (2, n, Ho, Wo, K, G) in one copy. Always a copy: when the permuted
    # view is already contiguous (1x1 kernel, one offset group, one image) .contiguous() would
    # return the caller's offset tensor itself, and the in-place adds below would modify it.
    off = (
        offset.reshape(n, G, K, 2, h_out, w_out)
        .permute(3, 0, 4, 5, 2, 1)
        .clone(memory_format=torch.contiguous_format)
    )
    y = off[0].add_((oy.view(-1, 1, 1) + ky.view(1, 1, -1)).unsqueeze(-1))
    x = off[1].add_((ox.view(1, -1, 1) + kx.view(1, 1, -1)).unsqueeze(-1))
    return y, x


class _Bags(NamedTuple):
    """The four bilinear corners of every sample point, bags ordered (n, l, k, g).

    rows: (M, 4) int64 rows of the padded channels-last table (:func:`_padded_table`);
    weights: (M, 4) corner weights with validity and mask folded in, finite (zero) at NaN
    positions; nan: (M, 1) bool, the sample position is NaN (the sample is NaN there; see
    :meth:`sample_weights`).
    M = n * L * K * G, so the summed bags form the channels-last column matrix (n * L, K * C).
    """

    rows: Tensor
    weights: Tensor
    nan: Tensor

    def sample_weights(self) -> Tensor:
        """The weights the forward sums: NaN at NaN positions, so those samples are NaN."""
        return self.weights.masked_fill(self.nan, float("nan"))


def _bilinear_bags(y: Tensor, x: Tensor, in_hw: tuple[int, int], mask: Optional[Tensor]) -> _Bags:
    """Corner rows and weights of every sample point.

    Args:
        y, x: (n, H_out, W_out, K, G) sampling coordinates from :func:`_sample_positions`.
        mask: (n, G * K, H_out, W_out) modulation or None; folded into the weights.
    """
    n, h_out, w_out, K, G = y.shape
    H, W = in_hw
    valid = ((y > -1) & (y < H) & (x > -1) & (x < W)).to(y.dtype)  # False for NaN and +-inf
    nan = (torch.isnan(y) | torch.isnan(x)).view(-1, 1)
    # Clamping only changes samples outside the valid window, whose weights are zeroed below;
    # it keeps far-away coordinates from overflowing the integer conversion (a NaN position
    # reads row -1, the zero padding, with zero weight: it is made NaN by sample_weights).
    y0f = torch.floor(y.clamp(-1, H - 1).nan_to_num_(nan=-1.0))
    x0f = torch.floor(x.clamp(-1, W - 1).nan_to_num_(nan=-1.0))
    # Finite everywhere (an infinite or NaN position would make 0 * inf = NaN weights); exact
    # inside the valid window, where the clamp above changed nothing.
    ly = (y - y0f).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    lx = (x - x0f).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    scale = valid
    if mask is not None:
        scale = valid * mask.reshape(n, G, K, h_out, w_out).permute(0, 3, 4, 2, 1)
    hy = (1 - ly) * scale  # fold validity and mask into the y factors only
    hx = 1 - lx
    ly_s = ly * scale
    weights = torch.stack((hy * hx, hy * lx, ly_s * hx, ly_s * lx), dim=-1)

    # The table is the input padded by one zero pixel on every side, so corners at -1 or H/W
    # read zero without a bounds check: padded row = ((n * (H+2) + y + 1) * (W+2) + x + 1) * G + g.
    Wp = W + 2
    nn_ = torch.arange(n, device=y.device).view(n, 1, 1, 1, 1) * (H + 2)
    gg = torch.arange(G, device=y.device)
    base = ((y0f.long() + 1 + nn_) * Wp + (x0f.long() + 1)) * G + gg
    rows = torch.stack((base, base + G, base + Wp * G, base + (Wp + 1) * G), dim=-1)
    return _Bags(rows.view(-1, 4), weights.view(-1, 4), nan)


def _padded_table(x: Tensor, offset_groups: int) -> Tensor:
    """(n, C, H, W) -> zero-padded channels-last table (n * (H+2) * (W+2) * G, C / G)."""
    n, c, h, w = x.shape
    table = x.new_zeros((n, h + 2, w + 2, c))
    table[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
    return table.view(-1, c // offset_groups)


def _columns(x: Tensor, rows: Tensor, weights: Tensor, offset_groups: int, n_cols: int) -> Tensor:
    """Channels-last column matrix (n * L, K * C): the bilinear samples, weighted and masked."""
    table = _padded_table(x, offset_groups)
    cols = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
    return cols.view(-1, n_cols)


def _weight_matrix(weight: Tensor, groups: int) -> Tensor:
    """(C_out, C_in/groups, kh, kw) -> (groups, K * C_in/groups, C_out/groups), rows ordered (k, c)."""
    c_out, c_in_g, kh, kw = weight.shape
    w = weight.reshape(groups, c_out // groups, c_in_g, kh * kw)
    return w.permute(0, 3, 2, 1).reshape(groups, kh * kw * c_in_g, c_out // groups)


def _group_columns(cols: Tensor, groups: int, K: int, c_in: int) -> list[Tensor]:
    """Split (M, K * C_in) columns into per-conv-group (M, K * C_in/groups) matrices."""
    if groups == 1:
        return [cols]
    c3 = cols.view(-1, K, c_in)
    cg = c_in // groups
    return [c3[:, :, i * cg : (i + 1) * cg].reshape(-1, K * cg) for i in range(groups)]


def deform_conv2d_forward(x: ConvInputs, conv: ConvParams) -> Tensor:
    """Forward pass; shapes in :class:`~dcn.ops._backend.ConvInputs` -> (N, C_out, H_out, W_out)."""
    input, offset, mask, weight, bias = x
    stride, padding, dilation, groups, offset_groups = conv
    n, c_in, H, W = input.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = offset.shape[-2:]
    K, L = kh * kw, h_out * w_out
    kernel = _fused_kernel(input)
    if kernel is not None:
        conf = _kernel_conf(stride, padding, dilation, groups, offset_groups, c_in * K * L)
        return kernel.deform_conv2d_forward(input, offset, mask, weight, bias, *conf)
    out = input.new_empty((n, c_out, h_out, w_out))
    if n == 0:
        return out
    w_mat = _weight_matrix(weight, groups)
    for s, e in _chunks(n, c_in * K * L):
        y, x = _sample_positions(offset[s:e], (kh, kw), stride, padding, dilation, offset_groups)
        bags = _bilinear_bags(y, x, (H, W), None if mask is None else mask[s:e])
        cols = _columns(
            input[s:e], bags.rows, bags.sample_weights(), offset_groups, K * c_in
        )  # (b*L, K*C_in)
        res = (
            torch.cat([torch.mm(c, w_mat[i]) for i, c in enumerate(_group_columns(cols, groups, K, c_in))], 1)
            if groups > 1
            else torch.mm(cols, w_mat[0])
        )  # (b*L, C_out)
        out[s:e] = res.view(e - s, h_out, w_out, c_out).permute(0, 3, 1, 2)
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def _column_grad_cl(go_groups: list[Tensor], w_mat: Tensor, K: int, c_in_g: int) -> Tensor:
    """Column gradient grad_out @ weight'^T in the channels-last layout (rows, K * C_in), (k, c) order."""
    groups = len(go_groups)
    if groups == 1:
        return torch.mm(go_groups[0], w_mat[0].t())
    parts = torch.cat([torch.mm(go, w_mat[i].t()) for i, go in enumerate(go_groups)], 1)
    # per-group products are laid out (group, k, c); restore (k, c) order over all channels
    return parts.view(-1, groups, K, c_in_g).transpose(1, 2).reshape(-1, K * groups * c_in_g)


def _to_offset_layout(t: Tensor, b: int, h_out: int, w_out: int, K: int, G: int) -> Tensor:
    """(b*L*K*G, 2) (dy, dx) per bag -> offset layout (b, 2*G*K, H_out, W_out)."""
    t = t.view(b, h_out, w_out, K, G, 2).permute(0, 4, 3, 5, 1, 2)
    return t.reshape(b, 2 * G * K, h_out, w_out)


def _to_mask_layout(t: Tensor, b: int, h_out: int, w_out: int, K: int, G: int) -> Tensor:
    """(b*L*K*G,) per bag -> mask layout (b, G*K, H_out, W_out)."""
    return t.view(b, h_out, w_out, K, G).permute(0, 4, 3, 1, 2).reshape(b, G * K, h_out, w_out)


def deform_conv2d_backward(
    grad_out: Tensor, x: ConvInputs, conv: ConvParams, needs_input_grad: Sequence[bool] = (True,) * 5
) -> tuple[Optional[Tensor], ...]:
    """Gradients ordered like ``x`` (and ``needs_input_grad``); ``None`` where not needed or not
    applicable. On CPU the sampling gradients come from dcn's fused C++ kernel
    (:mod:`dcn.ops._cpu_kernel`) when it can be built, else from ATen's ``grid_sampler_2d_backward``.
    """
    input, offset, mask, weight, bias = x
    stride, padding, dilation, groups, offset_groups = conv
    need_in, need_off, need_mask, need_w, need_b = (bool(v) for v in needs_input_grad)
    need_mask = need_mask and mask is not None
    need_b = need_b and bias is not None
    n, c_in, H, W = input.shape
    c_out, c_in_g, kh, kw = weight.shape
    h_out, w_out = offset.shape[-2:]
    K, L = kh * kw, h_out * w_out
    G = offset_groups
    cg = c_in // G
    c_out_g = c_out // groups

    grad_b = grad_out.sum(dim=(0, 2, 3)) if need_b else None
    kernel = _fused_kernel(input)
    if kernel is not None:
        conf = _kernel_conf(stride, padding, dilation, groups, offset_groups, c_in * K * L)
        needs = [need_in, need_off, need_mask, need_w]
        g_in, g_off, g_mask, g_w = kernel.deform_conv2d_backward(
            grad_out, input, offset, mask, weight, *conf, needs
        )
        return g_in, g_off, g_mask, g_w, grad_b

    # ATen path (other devices, or no C++ toolchain).
    grad_in = input.new_zeros(input.shape) if need_in else None
    grad_off = offset.new_empty(offset.shape) if need_off else None
    grad_mask = mask.new_empty(mask.shape) if need_mask else None
    grad_w_mat = weight.new_zeros((groups, K * c_in_g, c_out_g)) if need_w else None
    w_mat = _weight_matrix(weight, groups)  # (groups, K*C_in/groups, C_out/groups)
    w_cf_t = weight.reshape(groups, c_out_g, c_in_g * K).transpose(1, 2)  # rows ordered (c, k)
    for s, e in _chunks(n, c_in * K * L):
        b = e - s
        m = None if mask is None else mask[s:e]
        x_in = input[s:e]
        y, x = _sample_positions(offset[s:e], (kh, kw), stride, padding, dilation, G)
        # Channels-last grad_out: (b*L, C_out), matching the column matrix's rows.
        go_cl = grad_out[s:e].permute(0, 2, 3, 1).reshape(b * L, c_out)
        go_groups = [go_cl[:, i * c_out_g : (i + 1) * c_out_g] for i in range(groups)]

        # Fallback path (other devices/dtypes, or no C++ toolchain): ATen kernels only.
        if need_w or need_mask:
            # Recompute the columns (unmasked when the mask gradient needs them).
            bags = _bilinear_bags(y, x, (H, W), None if need_mask else m)
            cols = _columns(x_in, bags.rows, bags.sample_weights(), G, K * c_in)  # (b*L, K*C_in)
            del bags
            if need_mask:
                # d out / d mask[n,g,k,l] = sum over the group's channels of grad_cols * unmasked cols.
                gcols_cl = _column_grad_cl(go_groups, w_mat, K, c_in_g)
                gm = (gcols_cl.view(b * L * K * G, cg) * cols.view(b * L * K * G, cg)).sum(-1)
                grad_mask[s:e] = _to_mask_layout(gm, b, h_out, w_out, K, G)
                del gcols_cl
                if need_w:
                    m_cl = m.reshape(b, G, K, L).permute(0, 3, 2, 1).reshape(b * L, K, G, 1)
                    cols = (cols.view(b * L, K, G, cg) * m_cl).view(b * L, K * c_in)
            if need_w:
                for i, c in enumerate(_group_columns(cols, groups, K, c_in)):
                    grad_w_mat[i].addmm_(c.t(), go_groups[i])
            del cols

        if not (need_in or need_off):
            continue
        # weight.view(groups, C_out/groups, C_in/groups * K) has rows ordered (c, k), so the
        # product comes out directly as (b, C_in, K, L): no transposition of the columns.
        go_cf = grad_out[s:e].reshape(b, groups, c_out_g, L)
        gcols = torch.matmul(w_cf_t, go_cf).view(b, G, cg, K, L)
        if m is not None:
            gcols = gcols * m.reshape(b, G, 1, K, L)
        # align_corners=False normalisation for grid_sampler_2d_backward. Non-finite positions
        # become far-outside ones (zero gradient), NaN ones are made NaN again below.
        nan = torch.isnan(y) | torch.isnan(x)
        y_s, x_s = (t.clamp(-2.0, float(size) + 1.0).nan_to_num_(nan=-2.0) for t, size in ((y, H), (x, W)))
        grid = torch.stack(
            (x_s.mul_(2.0 / W).add_(1.0 / W - 1.0), y_s.mul_(2.0 / H).add_(1.0 / H - 1.0)), dim=-1
        )  # (b, Ho, Wo, K, G, 2) -> (b*G, K, L, 2)
        grid = grid.permute(0, 4, 3, 1, 2, 5).reshape(b * G, K, L, 2)
        gx, ggrid = torch.ops.aten.grid_sampler_2d_backward(
            gcols.reshape(b * G, cg, K, L),
            x_in.reshape(b * G, cg, H, W),
            grid,
            _BILINEAR,
            _ZEROS,
            False,
            [need_in, True],
        )
        if need_in:
            grad_in[s:e] = gx.view(b, c_in, H, W)
        if need_off:
            ggrid = ggrid.view(b, G, K, h_out, w_out, 2)
            go_off = grad_off[s:e].view(b, G, K, 2, h_out, w_out)
            go_off[:, :, :, 0] = ggrid[..., 1] * (2.0 / H)
            go_off[:, :, :, 1] = ggrid[..., 0] * (2.0 / W)
            go_off.masked_fill_(nan.permute(0, 4, 3, 1, 2).unsqueeze(3), float("nan"))

    grad_w = None
    if need_w:
        # (groups, K*C_in/groups, C_out/groups) with rows (k, c) -> (C_out, C_in/groups, kh, kw)
        grad_w = (
            grad_w_mat.view(groups, K, c_in_g, c_out_g).permute(0, 3, 2, 1).reshape(c_out, c_in_g, kh, kw)
        )
    return grad_in, grad_off, grad_mask, grad_w, grad_b
