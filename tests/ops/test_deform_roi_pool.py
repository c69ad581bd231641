"""dcn.ops.deform_roi_pool / DeformRoIPool / DeformRoIPoolPack / MultiScaleDeformRoIPool (PyTorch backend).

References: torchvision's roi_align (no offsets, and per-bin shifted RoIs with offsets) and a
slow, obviously-correct loop implementation of the definition (forward and autograd grads).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import pytest
import torch
import torchvision.ops
from cuda.roi_pool_cases import check_nonfinite_offsets, large_box_case
from cuda.roi_pool_cases import make_case as roi_case
from torchvision.ops import MultiScaleRoIAlign, RoIAlign, roi_align

from dcn.ops import (
    DeformRoIPool,
    DeformRoIPoolPack,
    ModulatedDeformRoIPoolPack,
    MultiScaleDeformRoIPool,
    _cpu_kernel,
    _torch_deform_roi_pool,
    deform_roi_pool,
)
from dcn.ops.deform_roi_pool import _deform_roi_pool_op, pyramid_levels


@pytest.fixture
def aten_path(monkeypatch):
    """The ATen implementation only: for tests of its own machinery (entry chunks)."""
    monkeypatch.setattr(_cpu_kernel, "load", lambda: None)


# --------------------------------------------------------------------------------------
# Case generation and the loop reference
# --------------------------------------------------------------------------------------
def make_rois(k, n, img_hw, dtype=torch.float64, seed=0, min_size=-4.0, max_size=None, margin=10.0):
    """k random boxes (batch, x1, y1, x2, y2) in image coordinates, some partly outside the
    image and some degenerate (x2 < x1) when min_size < 0."""
    g = torch.Generator().manual_seed(seed)
    H, W = img_hw
    max_size = max_size if max_size is not None else max(H, W) * 0.8
    x1 = torch.rand(k, generator=g, dtype=torch.float64) * (W + 2 * margin) - margin
    y1 = torch.rand(k, generator=g, dtype=torch.float64) * (H + 2 * margin) - margin
    w = torch.rand(k, generator=g, dtype=torch.float64) * (max_size - min_size) + min_size
    h = torch.rand(k, generator=g, dtype=torch.float64) * (max_size - min_size) + min_size
    b = torch.randint(0, n, (k,), generator=g).double()
    return torch.stack([b, x1, y1, x1 + w, y1 + h], 1).to(dtype)


def _bilinear_ref(img, y, x):
    """torchvision's roi_align bilinear_interpolate on one (C, H, W) image, differentiable."""
    C, H, W = img.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return img.new_zeros(C)
    y, x = torch.as_tensor(y, dtype=img.dtype).clamp(min=0), torch.as_tensor(x, dtype=img.dtype).clamp(min=0)
    y_low, x_low = int(math.floor(float(y.detach()))), int(math.floor(float(x.detach())))
    if y_low >= H - 1:
        y_low = y_high = H - 1
        y = y * 0 + y_low
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_low = x_high = W - 1
        x = x * 0 + x_low
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * img[:, y_low, x_low]
        + hy * lx * img[:, y_low, x_high]
        + ly * hx * img[:, y_high, x_low]
        + ly * lx * img[:, y_high, x_high]
    )


def deform_roi_pool_ref(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, aligned=True):
    """The definition, one sample at a time (slow; tiny cases only). Autograd gives its grads."""
    out_h, out_w = output_size
    K = rois.shape[0]
    out = []
    for k in range(K):
        n = int(rois[k, 0])
        shift = 0.5 if aligned else 0.0
        sx, sy = float(rois[k, 1]) * spatial_scale - shift, float(rois[k, 2]) * spatial_scale - shift
        rw = float(rois[k, 3]) * spatial_scale - shift - sx
        rh = float(rois[k, 4]) * spatial_scale - shift - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / out_w, rh / out_h
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(bh)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(bw)
        count = max(gh * gw, 1)
        bins = []
        for i, j in itertools.product(range(out_h), range(out_w)):
            dy = gamma * rh * offset[k, 1, i, j] if offset is not None else 0.0
            dx = gamma * rw * offset[k, 0, i, j] if offset is not None else 0.0
            acc = input.new_zeros(input.shape[1])
            for iy, ix in itertools.product(range(max(gh, 0)), range(max(gw, 0))):
                y = sy + i * bh + (iy + 0.5) * bh / gh + dy
                x = sx + j * bw + (ix + 0.5) * bw / gw + dx
                acc = acc + _bilinear_ref(input[n], y, x)
            bins.append(acc / count)
        out.append(torch.stack(bins, 1).view(-1, out_h, out_w))
    return torch.stack(out) if out else input.new_zeros((0, input.shape[1], out_h, out_w))


def _sample_coords(rois, offset, output_size, spatial_scale, sampling_ratio, gamma, aligned=True):
    """All sample coordinates (y list, x list) in float64, from the reference formulas."""
    geo = _torch_deform_roi_pool._geometry(rois.double(), output_size, spatial_scale, sampling_ratio, aligned)
    ys, xs = [], []
    for k in range(rois.shape[0]):
        gh, gw = int(geo.grid_h[k]), int(geo.grid_w[k])
        for i, j in itertools.product(range(output_size[0]), range(output_size[1])):
            dy = float(gamma * geo.height[k] * offset[k, 1, i, j])
            dx = float(gamma * geo.width[k] * offset[k, 0, i, j])
            ys += [
                float(geo.start_y[k] + i * geo.bin_h[k] + (iy + 0.5) * geo.bin_h[k] / gh) + dy
                for iy in range(gh)
            ]
            xs += [
                float(geo.start_x[k] + j * geo.bin_w[k] + (ix + 0.5) * geo.bin_w[k] / gw) + dx
                for ix in range(gw)
            ]
    return ys, xs


def smooth_offset(rois, output_size, spatial_scale, sampling_ratio, gamma, scale=0.6):
    """Random offsets whose samples all lie >= 0.01 px from integer coordinates, where the
    pooling is not differentiable (bilinear kinks, the clamp at 0 / H-1, the cut at -1 / H),
    so finite differences are valid. Draws seeds until one qualifies."""
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        off = (
            torch.rand((rois.shape[0], 2) + tuple(output_size), generator=g, dtype=torch.float64) * 2 - 1
        ) * scale
        ys, xs = _sample_coords(rois, off, output_size, spatial_scale, sampling_ratio, gamma)
        if min(abs(v - round(v)) for v in ys + xs) > 0.01:
            return off
    raise AssertionError("no smooth offset found; use fewer samples")


# --------------------------------------------------------------------------------------
# No offsets: equals torchvision's roi_align
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize(
    "n,c,hw,output_size,spatial_scale",
    [
        (2, 3, (9, 11), (3, 4), 0.5),
        (1, 5, (16, 16), (7, 7), 1 / 4),
        (3, 2, (1, 7), (2, 2), 1.0),
        (2, 4, (13, 6), (1, 5), 1 / 3),
    ],
)
def test_matches_roi_align(dtype, sampling_ratio, aligned, n, c, hw, output_size, spatial_scale, cpu_path):
    x = torch.randn(n, c, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    img_hw = (hw[0] / spatial_scale, hw[1] / spatial_scale)
    # Slightly degenerate boxes (x2 < x1 by < 0.5) included; more negative sizes make
    # torchvision's own adaptive roi_align allocate a negative-size buffer and fail.
    rois = make_rois(25, n, img_hw, dtype, seed=sampling_ratio, min_size=-0.5)
    ref = roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned)
    out = deform_roi_pool(
        x, rois, None, output_size, spatial_scale, sampling_ratio, aligned=aligned, backend="torch"
    )
    zero = deform_roi_pool(
        x,
        rois,
        torch.zeros((25, 2) + output_size, dtype=dtype),
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned=aligned,
        backend="torch",
    )
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert out.shape == (25, c) + output_size and out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(zero, ref, atol=tol, rtol=tol)


def test_box_list_format_and_grad_input_match_roi_align():
    x = torch.randn(2, 4, 12, 10, dtype=torch.float64, requires_grad=True)
    boxes = [make_rois(7, 1, (24, 20), seed=3)[:, 1:], make_rois(5, 1, (24, 20), seed=4)[:, 1:]]
    ref = roi_align(x, boxes, 3, 0.5, 0, aligned=True)
    out = deform_roi_pool(x, boxes, None, 3, 0.5, 0)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    (g_ref,) = torch.autograd.grad(ref, x, g)
    (g_out,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(g_out, g_ref)


def test_large_rois_adaptive_grid_match_roi_align():
    # Many samples per bin (ceil(roi / out) up to 10) and RoIs bigger than the map.
    x = torch.randn(1, 3, 20, 20, dtype=torch.float64)
    rois = make_rois(10, 1, (20, 20), seed=5, min_size=30, max_size=70)
    out = deform_roi_pool(x, rois, None, (3, 2), 1.0, 0)
    torch.testing.assert_close(out, roi_align(x, rois, (3, 2), 1.0, 0, aligned=True))


# --------------------------------------------------------------------------------------
# With offsets
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_each_bin_is_roi_align_of_the_shifted_roi(sampling_ratio, aligned):
    """Bin (i, j) of RoI k == bin (i, j) of roi_align over RoI k moved by that bin's offset."""
    n, c, hw, out_hw, scale, gamma = 2, 3, (11, 13), (3, 4), 0.5, 0.1
    x = torch.randn(n, c, *hw, dtype=torch.float64)
    rois = make_rois(9, n, (22, 26), seed=7, min_size=1.0)
    offset = torch.randn((9, 2) + out_hw, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = deform_roi_pool(x, rois, offset, out_hw, scale, sampling_ratio, gamma, aligned=aligned)

    # RoI size in feature coordinates (roi_align's legacy mode makes it at least 1x1).
    width = (rois[:, 3] - rois[:, 1]) * scale
    height = (rois[:, 4] - rois[:, 2]) * scale
    if not aligned:
        width, height = width.clamp(min=1), height.clamp(min=1)
    # Shift in image coordinates: gamma * roi_size (feature coords) * offset / spatial_scale.
    dx = gamma * width.view(-1, 1, 1) * offset[:, 0] / scale  # (K, out_h, out_w)
    dy = gamma * height.view(-1, 1, 1) * offset[:, 1] / scale
    shifted = rois.view(-1, 1, 1, 5).repeat(1, *out_hw, 1)
    shifted[..., 1] += dx
    shifted[..., 3] += dx
    shifted[..., 2] += dy
    shifted[..., 4] += dy
    ref_all = roi_align(x, shifted.view(-1, 5), out_hw, scale, sampling_ratio, aligned)  # (K*B, C, oh, ow)
    ref_all = ref_all.view(9, out_hw[0], out_hw[1], c, *out_hw)
    i, j = torch.meshgrid(torch.arange(out_hw[0]), torch.arange(out_hw[1]), indexing="ij")
    ref = ref_all[:, i, j, :, i, j].permute(2, 3, 0, 1)  # bin (i, j) of its own shifted RoI
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(out, roi_align(x, rois, out_hw, scale, sampling_ratio, aligned))


@pytest.mark.parametrize("sampling_ratio", [0, 1, 3])
@pytest.mark.parametrize("aligned", [True, False])
def test_forward_and_grads_match_loop_reference(sampling_ratio, aligned, cpu_path):
    torch.manual_seed(0)  # the same case whatever ran before (the RoI count check below needs it)
    n, c, hw, out_hw, scale, gamma = 2, 2, (7, 8), (2, 3), 0.5, 0.3
    x = torch.randn(n, c, *hw, dtype=torch.float64, requires_grad=True)
    rois = make_rois(8, n, (14, 16), seed=11, min_size=1.0, margin=2.0)
    rois[0, 1:] = torch.tensor([-40.0, -40.0, -30.0, -30.0])  # far outside
    rois[1, 3] = rois[1, 1] - 2.0  # degenerate: x2 < x1
    offset = (torch.randn((8, 2) + out_hw, dtype=torch.float64) * 0.8).requires_grad_()
    out = deform_roi_pool(x, rois, offset, out_hw, scale, sampling_ratio, gamma, aligned=aligned)
    ref = deform_roi_pool_ref(x, rois, offset, out_hw, scale, sampling_ratio, gamma, aligned)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    assert (ref.abs().sum((1, 2, 3)) > 0).sum() >= 5  # most RoIs really sample the map
    g = torch.randn_like(out)
    gx, goff = torch.autograd.grad(out, (x, offset), g)
    gx_ref, goff_ref = torch.autograd.grad(ref, (x, offset), g)
    torch.testing.assert_close(gx, gx_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(goff, goff_ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradcheck(sampling_ratio, cpu_path):
    n, c, hw, out_hw, scale, gamma = 2, 1, (5, 6), (2, 2), 0.5, 0.2
    x = torch.randn(n, c, *hw, dtype=torch.float64, requires_grad=True)
    rois = make_rois(3, n, (10, 12), seed=13, min_size=1.5, margin=2.0)
    offset = smooth_offset(rois, out_hw, scale, sampling_ratio, gamma).requires_grad_()

    def f(x, offset):
        return deform_roi_pool(x, rois, offset, out_hw, scale, sampling_ratio, gamma)

    assert torch.autograd.gradcheck(f, (x, offset), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_kernel_channel_blocks_equal_the_aten_path(sampling_ratio, monkeypatch):
    """Wide channels on 4 threads: the kernel's backward splits them into blocks."""
    if _cpu_kernel.load() is None:
        pytest.fail(f"the CPU kernel did not build: {_cpu_kernel._failed}")
    x = torch.randn(2, 64, 12, 10, dtype=torch.float64)
    rois = make_rois(20, 2, (24, 20), seed=23, min_size=1.0)
    offset = torch.randn(20, 2, 3, 3, dtype=torch.float64) * 0.3
    grad = torch.randn(20, 64, 3, 3, dtype=torch.float64)

    def run():
        xs, offs = x.clone().requires_grad_(), offset.clone().requires_grad_()
        out = deform_roi_pool(xs, rois, offs, 3, 0.5, sampling_ratio, 0.4)
        return (out, *torch.autograd.grad(out, (xs, offs), grad))

    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        kernel = run()
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(_cpu_kernel, "load", lambda: None)
    for a, b in zip(kernel, run()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_only_input_or_only_offset_grad(cpu_path):
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    rois = make_rois(5, 1, (8, 8), seed=2, min_size=1.0)
    offset = torch.randn(5, 2, 2, 2, dtype=torch.float64) * 0.3
    xr, offr = x.clone().requires_grad_(), offset.clone().requires_grad_()
    full = torch.autograd.grad(deform_roi_pool(xr, rois, offr, 2).sum(), (xr, offr))
    (only_off,) = torch.autograd.grad(deform_roi_pool(x, rois, offr, 2).sum(), (offr,))
    (only_x,) = torch.autograd.grad(deform_roi_pool(xr, rois, offset, 2).sum(), (xr,))
    torch.testing.assert_close(only_off, full[1])
    torch.testing.assert_close(only_x, full[0])


def test_chunked_equals_unchunked(monkeypatch, aten_path):
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64, requires_grad=True)
    rois = make_rois(12, 2, (10, 9), seed=17, min_size=1.0, margin=2.0)
    offset = (torch.randn(12, 2, 3, 3, dtype=torch.float64) * 0.3).requires_grad_()
    out = deform_roi_pool(x, rois, offset, 3, 1.0, 0)
    grads = torch.autograd.grad(out.square().sum(), (x, offset))
    # A tiny budget (one sample per bin) forces one piece per RoI at best, and RoIs larger than
    # the budget are split into blocks of their sample grid, rows and columns.
    monkeypatch.setattr(_torch_deform_roi_pool, "_ENTRY_BUDGET", 36)
    geo = _torch_deform_roi_pool._geometry(rois, (3, 3), 1.0, 0, True)
    pieces = _torch_deform_roi_pool._chunks(geo, 9)
    assert any(p.partial for p in pieces) and len({p.lo for p in pieces}) == 12
    for p in pieces:
        samples = (
            (p.iy[1] - p.iy[0]) * (p.ix[1] - p.ix[0])
            if p.partial
            else int((geo.grid_h[p.lo : p.hi] * geo.grid_w[p.lo : p.hi]).sum())
        )
        assert samples * 4 * 9 <= 36, p
    out_c = deform_roi_pool(x, rois, offset, 3, 1.0, 0)
    grads_c = torch.autograd.grad(out_c.square().sum(), (x, offset))
    torch.testing.assert_close(out_c, out)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b)


def test_degenerate_and_far_outside_boxes_are_finite(cpu_path):
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    rois = torch.tensor(
        [
            [0, 1e6, 1e6, 1e6 + 10, 1e6 + 10],  # far outside
            [0, -1e6, -1e6, -1e6 + 4, -1e6 + 4],
            [0, 4.0, 4.0, 1.0, 1.0],  # x2 < x1
            [0, 3.0, 3.0, 3.0, 3.0],  # empty
            [0, -20.0, -20.0, 40.0, 40.0],  # bigger than the map
        ]
    )
    offset = (torch.randn(5, 2, 3, 3) * 5).requires_grad_()
    for sr in (0, 2):
        out = deform_roi_pool(x, rois, offset, 3, 1.0, sr)
        gx, goff = torch.autograd.grad(out.sum(), (x, offset))
        assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(goff).all()
        assert (out[:2] == 0).all()
    # Only degenerate boxes: no sample at all, zero output and gradients.
    out = deform_roi_pool(x, rois[2:4], offset[2:4], 3, 1.0, 0)
    gx, goff = torch.autograd.grad(out.sum(), (x, offset))
    assert (out == 0).all() and (gx == 0).all() and (goff == 0).all()
    # roi_align pools degenerate boxes to zero under adaptive sampling; so do we.
    out = deform_roi_pool(x, rois, None, 3, 1.0, 0)
    torch.testing.assert_close(out, roi_align(x, rois, 3, 1.0, 0, aligned=True))


def test_empty_boxes_and_empty_channels(cpu_path):
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = deform_roi_pool(x, torch.zeros(0, 5), torch.zeros(0, 2, 2, 2), 2)
    assert out.shape == (0, 3, 2, 2)
    out.sum().backward()
    assert (x.grad == 0).all()
    assert deform_roi_pool(torch.randn(1, 0, 4, 4), torch.tensor([[0, 0, 0, 2.0, 2.0]]), None, 2).shape == (
        1,
        0,
        2,
        2,
    )
    assert deform_roi_pool(x, [], None, 2).shape == (0, 3, 2, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype, cpu_path):
    x = torch.randn(1, 4, 8, 8)
    rois = make_rois(6, 1, (8, 8), torch.float32, seed=19, min_size=1.0)
    offset = torch.randn(6, 2, 2, 2) * 0.2
    out = deform_roi_pool(x.to(dtype), rois, offset.to(dtype), 2)
    ref = deform_roi_pool(x.to(dtype).float(), rois.to(dtype).float(), offset.to(dtype).float(), 2)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)


def test_cpu_autocast_computes_in_float32():
    x = torch.randn(1, 4, 8, 8)
    rois = make_rois(6, 1, (8, 8), torch.float32, seed=23, min_size=1.0)
    offset = torch.randn(6, 2, 2, 2) * 0.2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_roi_pool(x, rois, offset, 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, deform_roi_pool(x, rois, offset, 2))


def test_cpu_autocast_keeps_large_boxes_float32():
    """bfloat16 features under autocast: the boxes stay float32 (at 512-1024 px bfloat16 has 4 px
    steps), so the result is the float32 computation on the features, not on rounded boxes."""
    x, rois, off, _ = large_box_case()
    x = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_roi_pool(x, rois, off, 3, 1 / 8, 2)
    ref = deform_roi_pool(x.float(), rois, off, 3, 1 / 8, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    rounded_boxes = deform_roi_pool(x.float(), rois.bfloat16().float(), off, 3, 1 / 8, 2)
    assert not torch.allclose(rounded_boxes, ref, rtol=1e-2, atol=1e-2)


def test_pack_under_autocast_with_float32_features():
    """Under autocast the offset head predicts bfloat16 offsets for float32 features: the op casts
    both, so their dtypes need not match (outside autocast they must)."""
    torch.manual_seed(0)
    pool = DeformRoIPoolPack(3, 2, 0.5, 0, hidden_channels=8)
    with torch.no_grad():
        pool.offset_head.fc[-1].weight.normal_(0, 0.1)
    x = torch.randn(1, 3, 8, 8)
    rois = torch.tensor([[0, 1.0, 2.0, 12.0, 13.0], [0, 4.0, 0.0, 15.0, 9.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pool(x, rois)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, pool(x, rois), rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    rois = torch.tensor([[0, 1, 1, 30, 30.0], [1, 5, 5, 40, 20]])
    offset = (torch.randn(2, 2, 3, 3) * 0.3).requires_grad_()
    compiled = torch.compile(lambda x, o: deform_roi_pool(x, rois, o, 3, 0.5, 0), fullgraph=True)
    out = compiled(x, offset)
    grads = torch.autograd.grad(out.square().sum(), (x, offset))
    ref = deform_roi_pool(x, rois, offset, 3, 0.5, 0)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, offset))
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("with_offset", [False, True])
def test_opcheck(with_offset):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    rois = make_rois(5, 2, (7, 6), seed=29, min_size=1.0)
    offset = (torch.randn(5, 2, 2, 3, dtype=torch.float64) * 0.3).requires_grad_() if with_offset else None
    torch.library.opcheck(_deform_roi_pool_op, (x, rois, offset, [2, 3], 1.0, 0, 0.1, True, "torch"))


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(boxes=torch.zeros(3, 4)), ValueError, r"Tensor\[K, 5\]"),
        (dict(boxes=[torch.zeros(3, 5)]), ValueError, r"boxes\[0\] must be a Tensor\[L, 4\]"),
        (dict(boxes=[torch.zeros(1, 4)] * 3), ValueError, "only 2 images"),
        (dict(boxes="boxes"), TypeError, "boxes must be"),
        (dict(boxes=torch.tensor([[2.0, 0, 0, 1, 1]])), ValueError, r"batch indices in \[0, 1\]"),
        (dict(boxes=torch.tensor([[-1.0, 0, 0, 1, 1]])), ValueError, "batch indices"),
        (dict(boxes=torch.tensor([[0.5, 0, 0, 1, 1]])), ValueError, "integer batch indices"),
        (dict(boxes=torch.tensor([[0.0, 0, 0, float("inf"), 1]])), ValueError, "non-finite"),
        (
            dict(offset=torch.zeros(1, 2, 3, 3)),
            ValueError,
            r"offset must have shape \(K, 2, out_h, out_w\) = \(1, 2, 2, 2\)",
        ),
        (dict(offset=torch.zeros(1, 2, 2, 2, dtype=torch.float64)), TypeError, "dtype"),
        (dict(spatial_scale=-0.5), ValueError, "spatial_scale must be positive and finite"),
        (dict(output_size=0), ValueError, "output_size must be positive"),
        (dict(output_size=(2, -1)), ValueError, "output_size must be positive"),
        (dict(sampling_ratio=-1), ValueError, "sampling_ratio must be >= 0"),
        (dict(backend="triton"), ValueError, "unknown backend"),
        (dict(input=torch.randn(4, 5, 5)), ValueError, r"4-D \(N, C, H, W\)"),
        (dict(input=torch.zeros(2, 3, 5, 5, dtype=torch.int64)), TypeError, "floating-point"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(
        input=torch.randn(2, 3, 5, 5),
        boxes=torch.tensor([[0.0, 0, 0, 2, 2]]),
        offset=None,
        output_size=2,
        spatial_scale=1.0,
        sampling_ratio=0,
    )
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        deform_roi_pool(**args)


def test_cupy_backend_on_cpu_tensors_is_an_error():
    with pytest.raises((RuntimeError, ValueError), match="backend='cupy'"):
        deform_roi_pool(torch.randn(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2]]), backend="cupy")


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_module_at_init_equals_roi_align(sampling_ratio):
    torch.manual_seed(0)
    layer = DeformRoIPoolPack(4, (3, 2), 0.25, sampling_ratio, hidden_channels=16)
    x = torch.randn(2, 4, 10, 12)
    boxes = [
        make_rois(5, 1, (40, 48), torch.float32, seed=31)[:, 1:],
        make_rois(3, 1, (40, 48), torch.float32, seed=37)[:, 1:],
    ]
    ref = RoIAlign((3, 2), 0.25, sampling_ratio, aligned=True)(x, boxes)
    torch.testing.assert_close(layer(x, boxes), ref)

    modulated = DeformRoIPoolPack(4, (3, 2), 0.25, sampling_ratio, hidden_channels=16, modulated=True)
    torch.testing.assert_close(modulated(x, boxes), 0.5 * ref)


def test_module_learns_offsets_and_mask():
    torch.manual_seed(0)
    layer = DeformRoIPoolPack(3, 2, 0.5, 0, gamma=0.1, hidden_channels=8, modulated=True).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    rois = make_rois(4, 1, (16, 16), seed=41, min_size=2.0)
    out = layer(x, rois)
    out.square().sum().backward()
    last = layer.offset_head.fc[-1]
    # The zero-initialised last layer receives gradient, so offsets and mask can be learned.
    assert last.weight.grad.abs().sum() > 0
    with torch.no_grad():
        last.weight.normal_(0, 0.1)
        last.bias.normal_(0, 0.5)
    out2 = layer(x, rois)
    pooled = deform_roi_pool(x, rois, None, 2, 0.5, 0)
    pred = layer.offset_head.fc(pooled.flatten(1))
    expect = deform_roi_pool(x, rois, pred[:, :8].view(4, 2, 2, 2), 2, 0.5, 0) * torch.sigmoid(
        pred[:, 8:]
    ).view(4, 1, 2, 2)
    torch.testing.assert_close(out2, expect)


def test_module_checks_and_repr():
    with pytest.raises(ValueError, match="in_channels"):
        DeformRoIPoolPack(0, 7, 1 / 16)
    with pytest.raises(ValueError, match="spatial_scale"):
        DeformRoIPoolPack(4, 7, -1.0)
    with pytest.raises(ValueError, match="unknown backend"):
        DeformRoIPoolPack(4, 7, 1.0, backend="nope")
    layer = DeformRoIPoolPack(4, 7, 1 / 16, modulated=True)
    with pytest.raises(ValueError, match="expected input with 4 channels"):
        layer(torch.randn(1, 3, 8, 8), torch.tensor([[0.0, 0, 0, 4, 4]]))
    assert layer.extra_repr() == (
        "4, output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=0, gamma=0.1, "
        "hidden_channels=1024, modulated=True"
    )
    assert layer.offset_head.fc[-1].out_features == 3 * 49


def test_offset_module_is_the_functional_op():
    """DeformRoIPool(output_size, spatial_scale, sampling_ratio, gamma).forward(input, rois,
    offset=None): mmcv's signature, the functional op with the module's settings."""
    x = torch.randn(2, 4, 10, 12, dtype=torch.float64)
    rois = make_rois(6, 2, (40, 48), seed=43)
    off = torch.randn(6, 2, 3, 2, dtype=torch.float64) * 0.2
    layer = DeformRoIPool((3, 2), 0.25, 2, gamma=0.2)
    assert list(layer.parameters()) == []
    torch.testing.assert_close(layer(x, rois, off), deform_roi_pool(x, rois, off, (3, 2), 0.25, 2, 0.2))
    torch.testing.assert_close(layer(x, rois), RoIAlign((3, 2), 0.25, 2, aligned=True)(x, rois))
    assert layer.extra_repr() == "output_size=(3, 2), spatial_scale=0.25, sampling_ratio=2, gamma=0.2"
    # The module checks its settings as the functional op does, at construction.
    for kwargs, match in [
        (dict(spatial_scale=0.0), "spatial_scale must be positive and finite"),
        (dict(spatial_scale=float("inf")), "spatial_scale must be positive and finite"),
        (dict(output_size=(7, 0)), r"output_size must be positive \(int or \(out_h, out_w\)\)"),
        (dict(sampling_ratio=-2), r"sampling_ratio must be >= 0 \(0 = adaptive"),
        (dict(backend="triton"), "unknown backend 'triton'"),
    ]:
        with pytest.raises(ValueError, match=match):
            DeformRoIPool(**{"output_size": 7, **kwargs})
    # The self-predicting layer's former signature, DeformRoIPool(in_channels, output_size,
    # spatial_scale), would read as output_size=256, spatial_scale=7, sampling_ratio=1/16: refused,
    # naming the layer that has that signature now.
    with pytest.raises(
        TypeError, match=r"sampling_ratio must be an integer, got 0.0625.*DeformRoIPoolPack\("
    ):
        DeformRoIPool(256, 7, 1 / 16)
    with pytest.raises(TypeError, match="sampling_ratio must be an integer"):
        deform_roi_pool(torch.randn(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2]]), None, 2, 1.0, 2.0)


def test_modulated_pack_name():
    layer = ModulatedDeformRoIPoolPack(4, 3, 0.5, hidden_channels=8)
    assert layer.modulated and isinstance(layer, DeformRoIPoolPack) and isinstance(layer, DeformRoIPool)
    assert layer.offset_head.fc[-1].out_features == 3 * 9


def _pyramid(n=2, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = OrderedDict()
    for name, size in (("p2", 128), ("p3", 64), ("p4", 32), ("p5", 16)):
        feats[name] = torch.randn(n, c, size, size, generator=g)
    feats["pool"] = torch.randn(n, c, 8, 8, generator=g)  # not pooled, as in torchvision's FPN
    boxes = []
    for i in range(n):
        xy = torch.rand(20, 2, generator=g) * 200
        wh = torch.rand(20, 2, generator=g) ** 2 * 480 + 4  # FPN levels 2..5
        boxes.append(torch.cat([xy, xy + wh], 1))
    return feats, boxes, [(512, 512)] * n


@pytest.mark.parametrize("names", [["p2", "p3", "p4", "p5"], ["p3"]])
def test_multiscale_at_init_equals_multiscale_roi_align(names):
    torch.manual_seed(0)
    feats, boxes, shapes = _pyramid()
    ours = MultiScaleDeformRoIPool(names, 7, 2, in_channels=4, hidden_channels=16)
    ref = MultiScaleRoIAlign(names, 7, 2)
    torch.testing.assert_close(ours(feats, boxes, shapes), ref(feats, boxes, shapes))
    assert ours.scales == ref.scales


@pytest.mark.parametrize(
    "image_shapes,sizes",
    [
        ([(512, 512)], [(128, 128), (64, 64), (32, 32), (16, 16)]),
        ([(600, 1000), (480, 800)], [(150, 250), (75, 125), (38, 63), (19, 32)]),  # rounded strides
        ([(333, 500)], [(42, 63), (21, 32), (11, 16)]),  # odd sizes, levels 3..5
        ([(800, 1333)], [(50, 84)]),  # a single level
    ],
)
@pytest.mark.parametrize("canonical", [(224, 4), (112, 3)])
def test_pyramid_levels_are_torchvision_s(image_shapes, sizes, canonical):
    # dcn's own inference of the level scales and the box-to-level rule equals what
    # MultiScaleRoIAlign infers on its first call.
    feats = OrderedDict((f"f{i}", torch.zeros(1, 1, h, w)) for i, (h, w) in enumerate(sizes))
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 30.0], [10.0, 10.0, 300.0, 250.0], [0.0, 0.0, 90.0, 60.0]])]
    ref = MultiScaleRoIAlign(list(feats), 2, 0, canonical_scale=canonical[0], canonical_level=canonical[1])
    ref(feats, boxes * len(image_shapes), image_shapes)
    scales, mapper = pyramid_levels(list(feats.values()), image_shapes, *canonical)
    assert scales == ref.scales
    assert (mapper.k_min, mapper.k_max) == (ref.map_levels.k_min, ref.map_levels.k_max)
    torch.testing.assert_close(mapper(boxes), ref.map_levels(boxes), rtol=0, atol=0)
    with pytest.raises(ValueError, match="image_shapes must give"):
        pyramid_levels(list(feats.values()), [])


def test_multiscale_takes_the_maps_in_the_order_of_x_as_torchvision():
    feats, boxes, shapes = _pyramid()
    names = ["p4", "p2", "p5", "p3"]  # x lists them fine to coarse
    ours = MultiScaleDeformRoIPool(names, 3, 0, in_channels=4, hidden_channels=16)
    torch.testing.assert_close(
        ours(feats, boxes, shapes), MultiScaleRoIAlign(names, 3, 0)(feats, boxes, shapes)
    )


def test_multiscale_with_offsets_pools_each_box_at_its_level():
    torch.manual_seed(0)
    feats, boxes, shapes = _pyramid()
    names = ["p2", "p3", "p4", "p5"]
    ours = MultiScaleDeformRoIPool(names, 3, 0, in_channels=4, hidden_channels=16)
    with torch.no_grad():
        ours.offset_head.fc[-1].weight.normal_(0, 0.05)
    out = ours(feats, boxes, shapes)
    # Reference: torchvision's level assignment, then our single-level op per box.
    ref_pooler = MultiScaleRoIAlign(names, 3, 0)
    base = ref_pooler(feats, boxes, shapes)
    levels = ref_pooler.map_levels(boxes)
    assert len(levels.unique()) >= 3  # the boxes really span several levels
    offset, _ = ours.offset_head(base)
    rois = torchvision.ops._utils.convert_boxes_to_roi_format(boxes)
    expect = torch.stack(
        [
            deform_roi_pool(
                feats[names[lvl]],
                rois[k : k + 1],
                offset[k : k + 1],
                3,
                ref_pooler.scales[lvl],
                0,
                aligned=False,
            )[0]
            for k, lvl in enumerate(levels.tolist())
        ]
    )
    torch.testing.assert_close(out, expect)
    assert not torch.allclose(out, base)


def test_multiscale_bad_input():
    feats, boxes, shapes = _pyramid()
    pooler = MultiScaleDeformRoIPool(["p2", "p9"], 7, 2, in_channels=4)
    with pytest.raises(ValueError, match=r"\['p9'\].*missing"):
        pooler(feats, boxes, shapes)
    pooler = MultiScaleDeformRoIPool(["p2"], 7, 2, in_channels=8)
    with pytest.raises(ValueError, match=r"'p2' must be \(N, 8, H, W\)"):
        pooler(feats, boxes, shapes)
    with pytest.raises(ValueError, match="featmap_names"):
        MultiScaleDeformRoIPool([], 7, 2, in_channels=4)


def test_per_level_offset_heads_start_as_roi_align_then_each_level_uses_its_own_head():
    torch.manual_seed(0)
    feats, boxes, shapes = _pyramid()
    names = ["p2", "p3", "p4", "p5"]
    ours = MultiScaleDeformRoIPool(names, 3, 0, in_channels=4, hidden_channels=16, offset_heads="per_level")
    assert len(ours.offset_heads) == 4 and not hasattr(ours, "offset_head")
    assert "offset_heads='per_level'" in repr(ours)
    ref_pooler = MultiScaleRoIAlign(names, 3, 0)
    base = ref_pooler(feats, boxes, shapes)
    torch.testing.assert_close(ours(feats, boxes, shapes), base)

    with torch.no_grad():
        for head in ours.offset_heads:
            head.fc[-1].weight.normal_(0, 0.05)
    out = ours(feats, boxes, shapes)
    levels = ref_pooler.map_levels(boxes)
    assert len(levels.unique()) >= 3
    rois = torchvision.ops._utils.convert_boxes_to_roi_format(boxes)
    expect = []
    for k, lvl in enumerate(levels.tolist()):
        offset, _ = ours.offset_heads[lvl](base[k : k + 1])
        expect.append(
            deform_roi_pool(
                feats[names[lvl]], rois[k : k + 1], offset, 3, ref_pooler.scales[lvl], 0, aligned=False
            )[0]
        )
    torch.testing.assert_close(out, torch.stack(expect))
    # A shared head with level 0's weights gives other results for boxes of the other levels.
    shared = MultiScaleDeformRoIPool(names, 3, 0, in_channels=4, hidden_channels=16)
    shared.offset_head.load_state_dict(ours.offset_heads[0].state_dict())
    other = levels != 0
    assert not torch.allclose(shared(feats, boxes, shapes)[other], out[other])

    out.square().sum().backward()
    used = set(levels.tolist())
    for lvl, head in enumerate(ours.offset_heads):
        grad = head.fc[-1].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == (lvl in used)


def test_per_level_modulated_heads_give_a_mask_per_box():
    torch.manual_seed(0)
    feats, boxes, shapes = _pyramid()
    names = ["p2", "p3", "p4", "p5"]
    ours = MultiScaleDeformRoIPool(
        names, 3, 0, in_channels=4, hidden_channels=16, modulated=True, offset_heads="per_level"
    )
    ref = MultiScaleRoIAlign(names, 3, 0)(feats, boxes, shapes)
    torch.testing.assert_close(ours(feats, boxes, shapes), 0.5 * ref)  # sigmoid(0) = 0.5 at init
    with pytest.raises(ValueError, match="offset_heads must be one of \\['shared', 'per_level'\\]"):
        MultiScaleDeformRoIPool(names, 3, 0, in_channels=4, offset_heads="each")


# ------------------------------------------------------------------------------------------
# Huge RoIs, non-finite offsets, inputs unmodified
# ------------------------------------------------------------------------------------------
def test_huge_roi_bounded_work_equals_roi_align(monkeypatch, cpu_path):
    """A +-5000 px box with adaptive sampling has ~25 million samples: it is pooled in pieces of
    the entry budget (it used to exhaust memory), and equals roi_align."""
    from torchvision.ops import roi_align

    x = torch.randn(1, 4, 64, 64, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor(
        [[0, -5000.0, -5000.0, 5000.0, 5000.0], [0, 3.0, 4.0, 40.0, 50.0]], dtype=torch.float64
    )
    geo = _torch_deform_roi_pool._geometry(boxes, (7, 7), 0.5, 0, True)
    pieces = _torch_deform_roi_pool._chunks(geo, 49)
    assert int(geo.grid_h[0] * geo.grid_w[0]) * 4 * 49 > 20 * _torch_deform_roi_pool._ENTRY_BUDGET
    assert len(pieces) > 20 and all(p.lo == 0 for p in pieces[:-1])
    out = deform_roi_pool(x, boxes, None, 7, 0.5, 0)
    ref = roi_align(x, boxes, 7, 0.5, 0, aligned=True)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nonfinite_offsets(dtype, cpu_path):
    """NaN offset: NaN bin and NaN offset gradient, nothing into the input gradient; +-inf: the
    bin is outside the map. The same check runs on the CUDA kernels (tests/ops/cuda)."""
    check_nonfinite_offsets(
        _torch_deform_roi_pool.deform_roi_pool_forward, _torch_deform_roi_pool.deform_roi_pool_backward, dtype
    )


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_inputs_unmodified(sampling_ratio, cpu_path):
    x, rois, off, grad = roi_case(seed=21)
    before = [t.clone() for t in (x, rois, off, grad)]
    xs, offs = x.clone().requires_grad_(), off.clone().requires_grad_()
    out = deform_roi_pool(xs, rois, offs, (3, 2), 0.5, sampling_ratio)
    out.backward(grad)
    for t, b, name in zip(
        (xs.detach(), rois, offs.detach(), grad), before, ("input", "rois", "offset", "grad")
    ):
        assert torch.equal(t, b), f"{name} was modified"


def test_multiscale_under_autocast_with_bfloat16_features():
    """bfloat16 feature maps under autocast (a bf16-mixed FPN): the levels' float32 results go into one
    output of the features' dtype, as torchvision's MultiScaleRoIAlign does; values match float32."""
    feats, boxes, shapes = _pyramid()
    pooler = MultiScaleDeformRoIPool(list(feats), 7, 2, in_channels=4, hidden_channels=16)
    expected = pooler(feats, boxes, shapes)
    half = {name: f.to(torch.bfloat16) for name, f in feats.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pooler(half, boxes, shapes)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
