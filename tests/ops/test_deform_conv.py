"""dcn.ops.deform_conv2d / DeformConv2d / DeformConv2dPack (PyTorch backend) against torchvision and a
loop reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops
from cuda.deform_conv_cases import check_nonfinite_offsets, conv_args

from dcn.ops import (
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2dPack,
    _cpu_kernel,
    _torch_deform_conv,
    deform_conv2d,
)
from dcn.ops._backend import ConvInputs


def _out_size(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _safe_offsets(shape, base_y, base_x, dtype, scale=3.0, far=0.0, generator=None):
    """Random fractional offsets whose sample coordinates stay off integer values.

    At integer coordinates bilinear interpolation is not differentiable (one-sided derivatives
    differ) and torchvision's grad_offset is not the true derivative at y = -1 / x = -1 (vision
    issue 6885), so sample points are kept at least 0.05 away from integers. ``far`` is the
    fraction of points pushed far outside the image.
    """
    off = (torch.rand(shape, dtype=torch.float64, generator=generator) * 2 - 1) * scale
    n, c, h, w = shape
    off = off.view(n, c // 2, 2, h, w)
    for comp, base in ((0, base_y), (1, base_x)):
        pos = off[:, :, comp] + base
        frac = pos - pos.floor()
        pos = pos.floor() + frac.clamp(0.05, 0.95)
        off[:, :, comp] = pos - base
    if far > 0:
        push = torch.rand(off.shape, generator=generator, dtype=torch.float64) < far
        off = torch.where(push, off + 50.25 * torch.sign(torch.randn(off.shape, dtype=torch.float64)), off)
    return off.view(shape).to(dtype)


def _base_positions(G, kh, kw, h_out, w_out, stride, padding, dilation):
    """Regular-grid coordinates p0 + p_k, shaped (1, G*K, H_out, W_out) for y and x."""
    ky = torch.arange(kh).repeat_interleave(kw) * dilation[0]
    kx = torch.arange(kw).repeat(kh) * dilation[1]
    oy = torch.arange(h_out) * stride[0] - padding[0]
    ox = torch.arange(w_out) * stride[1] - padding[1]
    by = (ky.view(-1, 1, 1) + oy.view(1, -1, 1)).expand(-1, h_out, w_out)
    bx = (kx.view(-1, 1, 1) + ox.view(1, 1, -1)).expand(-1, h_out, w_out)
    return by.repeat(G, 1, 1).unsqueeze(0).double(), bx.repeat(G, 1, 1).unsqueeze(0).double()


def make_case(
    n, c_in, c_out, hw, kernel, stride, padding, dilation, groups, G, mask, bias, dtype, seed=0, far=0.1
):
    g = torch.Generator().manual_seed(seed)
    H, W = hw
    kh, kw = kernel
    h_out = _out_size(H, kh, stride[0], padding[0], dilation[0])
    w_out = _out_size(W, kw, stride[1], padding[1], dilation[1])
    x = torch.randn(n, c_in, H, W, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(c_out, c_in // groups, kh, kw, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(c_out, generator=g, dtype=torch.float64).to(dtype) if bias else None
    by, bx = _base_positions(G, kh, kw, h_out, w_out, stride, padding, dilation)
    off = _safe_offsets((n, 2 * G * kh * kw, h_out, w_out), by, bx, dtype, far=far, generator=g)
    m = torch.rand(n, G * kh * kw, h_out, w_out, generator=g, dtype=torch.float64).to(dtype) if mask else None
    return x, off, w, b, m


def _grads(fn, tensors, grad_out):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    ins = [t for t in leaves if t is not None]
    if out.numel() == 0:
        return out.detach(), [torch.zeros_like(t) for t in ins]
    grads = torch.autograd.grad(out, ins, grad_out, allow_unused=True)
    return out.detach(), [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, ins)]


def _assert_close(a, b, dtype, what):
    rtol, atol = (1e-8, 1e-10) if dtype == torch.float64 else (1e-4, 1e-4)
    # relative to the magnitude of the reference, so large-valued gradients are judged fairly
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


# The grid the issue asks for: batch 0/1/33, conv groups 2, offset groups 3, kernel (3, 2),
# stride (2, 1), padding (1, 0), dilation (2, 1), mask on/off, bias on/off.
GEOMETRIES = [
    # kernel, stride, padding, dilation
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 2), (2, 1), (1, 0), (2, 1)),
    ((1, 3), (1, 2), (0, 1), (1, 2)),
]
GROUPINGS = [(1, 1), (2, 1), (1, 3), (2, 3)]  # (conv groups, offset groups)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("mask,bias", [(False, True), (True, False), (True, True)])
def test_matches_torchvision(dtype, geometry, grouping, mask, bias, cpu_path):
    kernel, stride, padding, dilation = geometry
    groups, G = grouping
    case = make_case(2, 6, 4, (7, 9), kernel, stride, padding, dilation, groups, G, mask, bias, dtype)
    x, off, w, b, m = case

    def ours(x, off, w, b, m):
        return deform_conv2d(x, off, w, b, stride, padding, dilation, m, backend="torch")

    def ref(x, off, w, b, m):
        return torchvision.ops.deform_conv2d(x, off, w, b, stride, padding, dilation, m)

    go = torch.randn(ours(*case).shape, dtype=dtype)
    out, grads = _grads(ours, case, go)
    out_ref, grads_ref = _grads(ref, case, go)
    _assert_close(out, out_ref, dtype, "output")
    names = [nm for nm, t in zip(["input", "offset", "weight", "bias", "mask"], case) if t is not None]
    for nm, a, r in zip(names, grads, grads_ref):
        _assert_close(a, r, dtype, f"grad {nm}")


@pytest.mark.parametrize("n", [0, 1, 33])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_sizes(n, dtype, cpu_path):
    case = make_case(n, 6, 4, (5, 6), (3, 2), (2, 1), (1, 0), (2, 1), 2, 3, True, True, dtype, seed=n)
    x, off, w, b, m = case
    stride, padding, dilation = (2, 1), (1, 0), (2, 1)
    out = deform_conv2d(x, off, w, b, stride, padding, dilation, m)
    assert out.shape == (n, 4, _out_size(5, 3, 2, 1, 2), _out_size(6, 2, 1, 0, 1))
    go = torch.randn(out.shape, dtype=dtype)
    out, grads = _grads(lambda *a: deform_conv2d(*a[:4], stride, padding, dilation, a[4]), case, go)
    if n == 0:
        assert out.numel() == 0 and all(g.abs().sum() == 0 for g in grads)
        return
    out_ref, grads_ref = _grads(
        lambda *a: torchvision.ops.deform_conv2d(*a[:4], stride, padding, dilation, a[4]), case, go
    )
    _assert_close(out, out_ref, dtype, "output")
    for a, r in zip(grads, grads_ref):
        _assert_close(a, r, dtype, "grad")


def test_chunked_batch_matches_unchunked(monkeypatch, cpu_path):
    """A column budget forcing one image per chunk gives the same result as one chunk."""
    from dcn.ops import _torch_deform_conv

    case = make_case(5, 4, 3, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True, True, torch.float64)
    go = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    fn = lambda *a: deform_conv2d(*a[:4], 1, 1, 1, a[4])  # noqa: E731
    out_a, grads_a = _grads(fn, case, go)
    monkeypatch.setattr(_torch_deform_conv, "_COLUMN_BUDGET", 1)
    out_b, grads_b = _grads(fn, case, go)
    torch.testing.assert_close(out_a, out_b, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------
# The compiled CPU kernel's strategies
# ------------------------------------------------------------------------------------------
# (column order, fuse): the kernel picks these by shape; every pair must give torchvision's results.
STRATEGIES = {
    "kc-chunked": (1, 2),
    "ck-chunked": (2, 2),
    "kc-fused": (1, 1),
    "ck-fused": (2, 1),
}


@pytest.fixture(params=list(STRATEGIES))
def kernel_strategy(request, monkeypatch):
    """Force one of the kernel's (column order, per-thread tiles or chunk-wide GEMMs) strategies,
    with 4 threads so that the backward also splits channels into blocks."""
    from dcn.ops import _cpu_kernel

    if _cpu_kernel.load() is None:
        pytest.fail(f"the fused CPU kernel did not build: {_cpu_kernel._failed}")
    order, fuse = STRATEGIES[request.param]
    monkeypatch.setattr(_torch_deform_conv, "_COLUMN_ORDER", order)
    monkeypatch.setattr(_torch_deform_conv, "_FUSE", fuse)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    yield request.param
    torch.set_num_threads(threads)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("geometry", GEOMETRIES[:2])
@pytest.mark.parametrize("grouping", [(1, 1), (2, 3), (4, 2)])
@pytest.mark.parametrize("budget", [None, 1])
def test_kernel_strategies_match_torchvision(kernel_strategy, n, geometry, grouping, budget, monkeypatch):
    """Wide channels (several channel blocks per image in the backward), conv groups crossing offset
    groups, a mask and a bias; in one chunk and in one-image chunks."""
    if budget is not None:
        monkeypatch.setattr(_torch_deform_conv, "_COLUMN_BUDGET", budget)
    kernel, stride, padding, dilation = geometry
    groups, G = grouping
    case = make_case(
        n, 48, 8, (6, 7), kernel, stride, padding, dilation, groups, G, True, True, torch.float64
    )

    def ours(x, off, w, b, m):
        return deform_conv2d(x, off, w, b, stride, padding, dilation, m, backend="torch")

    def ref(x, off, w, b, m):
        return torchvision.ops.deform_conv2d(x, off, w, b, stride, padding, dilation, m)

    go = torch.randn(ours(*case).shape, dtype=torch.float64)
    out, grads = _grads(ours, case, go)
    out_ref, grads_ref = _grads(ref, case, go)
    _assert_close(out, out_ref, torch.float64, "output")
    for nm, a, r in zip(["input", "offset", "weight", "bias", "mask"], grads, grads_ref):
        _assert_close(a, r, torch.float64, f"grad {nm}")


_TENSOR_NAMES = ("input", "offset", "weight", "bias", "mask")
_GRAD_SUBSETS = [
    subset
    for r in range(1, len(_TENSOR_NAMES) + 1)
    for subset in itertools.combinations(range(len(_TENSOR_NAMES)), r)
]


@pytest.mark.parametrize("path", ["aten", *STRATEGIES])
def test_every_subset_of_wanted_gradients(path, monkeypatch):
    """Any combination of frozen tensors (e.g. an image input and a frozen offset predictor, with
    only the weights trained) gives exactly the gradients of the full computation."""
    from dcn.ops import _cpu_kernel

    if path == "aten":
        monkeypatch.setattr(_cpu_kernel, "load", lambda: None)
    else:
        order, fuse = STRATEGIES[path]
        monkeypatch.setattr(_torch_deform_conv, "_COLUMN_ORDER", order)
        monkeypatch.setattr(_torch_deform_conv, "_FUSE", fuse)
    case = make_case(2, 4, 4, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True, torch.float32)
    go = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    fn = lambda x, o, w, b, m: deform_conv2d(x, o, w, b, 1, 1, 1, m)  # noqa: E731
    _, full = _grads(fn, case, go)
    for subset in _GRAD_SUBSETS:
        leaves = [t.detach().requires_grad_(i in subset) for i, t in enumerate(case)]
        out = fn(*leaves)
        grads = torch.autograd.grad(out, [leaves[i] for i in subset], go)
        for i, g in zip(subset, grads):
            what = f"grad {_TENSOR_NAMES[i]} with only {[_TENSOR_NAMES[j] for j in subset]} wanted"
            _assert_close(g, full[i], torch.float32, what)


def test_kernel_strategies_agree_on_a_batch_of_large_images(monkeypatch):
    """Images large enough that each strategy works in several chunks of the batch (the per-thread
    tiles path keeps its channels-last tables to ~16 MiB)."""
    if _cpu_kernel.load() is None:
        pytest.fail(f"the fused CPU kernel did not build: {_cpu_kernel._failed}")
    case = make_case(
        5, 32, 4, (160, 160), (3, 3), (2, 2), (1, 1), (1, 1), 1, 2, True, True, torch.float64, far=0.0
    )
    go = torch.randn(5, 4, 80, 80, dtype=torch.float64)
    fn = lambda *a: deform_conv2d(*a[:4], 2, 1, 1, a[4])  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        results = []
        for order, fuse in STRATEGIES.values():
            monkeypatch.setattr(_torch_deform_conv, "_COLUMN_ORDER", order)
            monkeypatch.setattr(_torch_deform_conv, "_FUSE", fuse)
            results.append(_grads(fn, case, go))
    finally:
        torch.set_num_threads(threads)
    (out0, grads0), rest = results[0], results[1:]
    for out, grads in rest:
        torch.testing.assert_close(out, out0, rtol=1e-10, atol=1e-10)
        for a, b in zip(grads, grads0):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_kernel_strategies_nonfinite_offsets(kernel_strategy):
    def run(cfg, tensors, grad_out):
        out = _torch_deform_conv.deform_conv2d_forward(ConvInputs(*tensors), conv_args(cfg))
        return out, _torch_deform_conv.deform_conv2d_backward(
            grad_out, ConvInputs(*tensors), conv_args(cfg), [True] * 5
        )

    check_nonfinite_offsets(run, torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fuse", [1, 2])
def test_half_precision_on_cpu(dtype, fuse, monkeypatch):
    """bfloat16 and float16 run on the compiled kernel (float32 sampling and accumulation) and stay
    close to the float32 result; the output keeps the input dtype."""
    monkeypatch.setattr(_torch_deform_conv, "_FUSE", fuse)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 32, 9, 8, generator=g), torch.randn(16, 32, 3, 3, generator=g) / 10
    off, m = torch.randn(2, 18, 9, 8, generator=g), torch.rand(2, 9, 9, 8, generator=g)
    b, go = torch.randn(16, generator=g), torch.randn(2, 16, 9, 8, generator=g)
    ref_out, ref_grads = _grads(lambda *a: deform_conv2d(*a[:4], 1, 1, 1, a[4]), (x, off, w, b, m), go)
    out, grads = _grads(
        lambda *a: deform_conv2d(*a[:4], 1, 1, 1, a[4]),
        [t.to(dtype) for t in (x, off, w, b, m)],
        go.to(dtype),
    )
    assert out.dtype == dtype and all(gr.dtype == dtype for gr in grads)
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3

    def rel(a, r):
        return ((a.float() - r).abs().max() / r.abs().max()).item()

    assert rel(out, ref_out) < tol
    # The offset gradient (differences of neighbouring pixels) is ill-conditioned in 16 bits; the
    # others are sums of products.
    for name, a, r in zip(
        ("input", "weight", "bias", "mask"),
        [grads[i] for i in (0, 2, 3, 4)],
        [ref_grads[i] for i in (0, 2, 3, 4)],
    ):
        assert rel(a, r) < 2 * tol, name
    assert torch.isfinite(grads[1]).all()


# ------------------------------------------------------------------------------------------
# A slow reference written straight from the formula
# ------------------------------------------------------------------------------------------
def _bilinear(img, y, x):
    """img (H, W); zero outside; sample counts only for -1 < y < H and -1 < x < W."""
    H, W = img.shape
    if not (-1 < y < H and -1 < x < W):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    val = 0.0
    for yy, xx in itertools.product((y0, y0 + 1), (x0, x0 + 1)):
        if 0 <= yy < H and 0 <= xx < W:
            val += (1 - abs(y - yy)) * (1 - abs(x - xx)) * img[yy, xx].item()
    return val


def loop_reference(x, off, w, b, m, stride, padding, dilation):
    n, c_in, H, W = x.shape
    c_out, c_in_g, kh, kw = w.shape
    groups = c_in // c_in_g
    G = off.shape[1] // (2 * kh * kw)
    h_out, w_out = off.shape[2:]
    out = torch.zeros(n, c_out, h_out, w_out, dtype=torch.float64)
    for bi, o, i, j in itertools.product(range(n), range(c_out), range(h_out), range(w_out)):
        gi = o // (c_out // groups)
        acc = 0.0 if b is None else b[o].item()
        for cl in range(c_in_g):
            c = gi * c_in_g + cl
            g = c // (c_in // G)
            for ki, kj in itertools.product(range(kh), range(kw)):
                k = ki * kw + kj
                dy = off[bi, g * 2 * kh * kw + 2 * k, i, j].item()
                dx = off[bi, g * 2 * kh * kw + 2 * k + 1, i, j].item()
                y = i * stride[0] - padding[0] + ki * dilation[0] + dy
                xx = j * stride[1] - padding[1] + kj * dilation[1] + dx
                v = _bilinear(x[bi, c], y, xx)
                if m is not None:
                    v *= m[bi, g * kh * kw + k, i, j].item()
                acc += w[o, cl, ki, kj].item() * v
        out[bi, o, i, j] = acc
    return out


@pytest.mark.parametrize("mask", [False, True])
def test_matches_loop_reference(mask):
    stride, padding, dilation = (2, 1), (1, 0), (2, 1)
    x, off, w, b, m = make_case(
        2, 4, 2, (5, 4), (3, 2), stride, padding, dilation, 2, 2, mask, True, torch.float64, seed=3, far=0.2
    )
    ours = deform_conv2d(x, off, w, b, stride, padding, dilation, m)
    torch.testing.assert_close(
        ours, loop_reference(x, off, w, b, m, stride, padding, dilation), rtol=1e-10, atol=1e-10
    )


def test_sample_window_boundaries():
    """Samples just inside / outside -1 < y < H and exactly on pixel rows behave like the formula."""
    x = torch.arange(1.0, 13.0, dtype=torch.float64).view(1, 1, 3, 4)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    ys = torch.tensor([-1.5, -1.0, -0.999, -0.5, 0.0, 1.25, 2.0, 2.5, 2.999, 3.0, 3.5], dtype=torch.float64)
    # A 1x1 kernel over a 3 x len(ys) input; output row 0, column j samples (ys[j], j + 0.25).
    inp = torch.zeros(1, 1, 3, ys.numel(), dtype=torch.float64)
    inp[..., :4] = x
    off = torch.zeros(1, 2, 3, ys.numel(), dtype=torch.float64)
    off[0, 0, 0] = ys  # dy relative to row 0
    off[0, 1, 0] = 0.25
    out = deform_conv2d(inp, off, w)
    expected = torch.tensor(
        [_bilinear(inp[0, 0], y.item(), j + 0.25) for j, y in enumerate(ys)], dtype=torch.float64
    )
    torch.testing.assert_close(out[0, 0, 0], expected)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, -1] == 0  # y = -1.5 and y = 3.5 are outside


# ------------------------------------------------------------------------------------------
# Identities
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 2])
def test_zero_offsets_equal_conv2d(groups):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 9, 8, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, 3, 2, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    ref = F.conv2d(x, w, b, (2, 1), (1, 0), (2, 1), groups)
    off = torch.zeros(3, 2 * 3 * 2, *ref.shape[2:], dtype=torch.float64)
    torch.testing.assert_close(deform_conv2d(x, off, w, b, (2, 1), (1, 0), (2, 1)), ref)


@pytest.mark.parametrize("dy,dx", [(1, 0), (0, -2), (-1, 3), (2, 2)])
def test_integer_offsets_equal_conv_on_shifted_input(dy, dx):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 7, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    # Deformable conv with offset (dy, dx) everywhere == a plain conv (no padding) over the
    # zero-extended input window shifted by (dy, dx): sample (i - 1 + ki + dy, j - 1 + kj + dx).
    H, W = x.shape[2:]
    P = 1 + max(abs(dy), abs(dx))
    big = F.pad(x, (P, P, P, P))  # big[P + y] == x[y], zero outside
    window = big[:, :, P - 1 + dy : P - 1 + dy + H + 2, P - 1 + dx : P - 1 + dx + W + 2]
    ref = F.conv2d(window, w)
    off = torch.zeros(2, 18, 8, 7, dtype=torch.float64)
    off[:, 0::2] = dy
    off[:, 1::2] = dx
    torch.testing.assert_close(deform_conv2d(x, off, w, None, 1, 1), ref)


# ------------------------------------------------------------------------------------------
# Autograd machinery
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [False, True])
def test_gradcheck(mask, cpu_path):
    stride, padding, dilation = (2, 1), (1, 0), (2, 1)
    case = make_case(
        2, 4, 2, (5, 4), (3, 2), stride, padding, dilation, 2, 2, mask, True, torch.float64, seed=4, far=0.1
    )
    leaves = [t.requires_grad_() if t is not None else None for t in case]
    fn = lambda x, o, w, b, m: deform_conv2d(x, o, w, b, stride, padding, dilation, m)  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mask,bias", [(False, False), (True, True)])
def test_opcheck(mask, bias):
    stride, padding, dilation = [2, 1], [1, 0], [2, 1]
    x, off, w, b, m = make_case(
        2, 4, 2, (5, 4), (3, 2), stride, padding, dilation, 2, 2, mask, bias, torch.float64, seed=5
    )
    for t in (x, off, w, b, m):
        if t is not None:
            t.requires_grad_()
    torch.library.opcheck(
        torch.ops.dcn.deform_conv2d.default, (x, off, m, w, b, stride, padding, dilation, 2, 2, "torch")
    )


def test_partial_gradients(cpu_path):
    """Only the requested gradients are computed, and they equal the full computation's."""
    case = make_case(2, 4, 4, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, torch.float64)
    x, off, w, b, m = case
    go = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    _, full = _grads(lambda *a: deform_conv2d(*a[:4], 1, 1, 1, a[4]), case, go)
    off_leaf = off.clone().requires_grad_()
    out = deform_conv2d(x, off_leaf, w, b, 1, 1, 1, m)
    (g_off,) = torch.autograd.grad(out, off_leaf, go)
    torch.testing.assert_close(g_off, full[1])


def test_non_contiguous_inputs():
    case = make_case(2, 4, 4, (6, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True, True, torch.float64)
    x, off, w, b, m = case
    ref = deform_conv2d(x, off, w, b, 1, 1, 1, m)
    xc = x.to(memory_format=torch.channels_last)
    offc = off.transpose(2, 3).contiguous().transpose(2, 3)
    mc = m.transpose(2, 3).contiguous().transpose(2, 3)
    wc = w.transpose(2, 3).contiguous().transpose(2, 3)
    assert not offc.is_contiguous() and not xc.is_contiguous()
    torch.testing.assert_close(deform_conv2d(xc, offc, wc, b, 1, 1, 1, mc), ref)
    go = torch.randn_like(ref)
    leaves = [t.requires_grad_() for t in (xc, offc, wc, mc)]
    out = deform_conv2d(leaves[0], leaves[1], leaves[2], b, 1, 1, 1, leaves[3])
    grads = torch.autograd.grad(out, leaves, go)
    ref_leaves = [t.detach().contiguous().requires_grad_() for t in (x, off, w, m)]
    ref_out = deform_conv2d(ref_leaves[0], ref_leaves[1], ref_leaves[2], b, 1, 1, 1, ref_leaves[3])
    ref_grads = torch.autograd.grad(ref_out, ref_leaves, go)
    for g, r, name in zip(grads, ref_grads, ("input", "offset", "weight", "mask")):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12, msg=lambda m_: f"grad {name}: {m_}")


# ------------------------------------------------------------------------------------------
# Inputs are never modified; non-finite offsets
# ------------------------------------------------------------------------------------------
def test_1x1_kernel_single_image_leaves_offset_unmodified():
    """1x1 kernel, one offset group, one image: the offset's permuted view is already contiguous,
    and the op used to add the sampling grid into the caller's tensor."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 8, 10, 10, generator=g), torch.randn(4, 8, 1, 1, generator=g)
    off = torch.rand(1, 2, 10, 10, generator=g) - 0.5
    before = off.clone()
    first, second = deform_conv2d(x, off, w), deform_conv2d(x, off, w)
    assert torch.equal(off, before)
    assert torch.equal(first, second)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("geometry", GEOMETRIES + [((1, 1), (1, 1), (0, 0), (1, 1))])
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("mask,bias", [(False, False), (True, True)])
def test_inputs_unmodified(n, geometry, grouping, mask, bias, cpu_path):
    """Forward and backward leave every input (and the incoming gradient) bit-identical."""
    kernel, stride, padding, dilation = geometry
    groups, G = grouping
    case = make_case(n, 6, 4, (5, 7), kernel, stride, padding, dilation, groups, G, mask, bias, torch.float64)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in case]
    out = deform_conv2d(leaves[0], leaves[1], leaves[2], leaves[3], stride, padding, dilation, leaves[4])
    go = torch.randn_like(out)
    go_before = go.clone()
    out.backward(go)
    for t, before, name in zip(leaves, case, ("input", "offset", "weight", "bias", "mask")):
        if t is not None:
            assert torch.equal(t.detach(), before), f"{name} was modified"
    assert torch.equal(go, go_before), "grad_output was modified"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nonfinite_offsets(dtype, cpu_path):
    """NaN offsets: NaN only at the outputs that sample them; +-inf: a sample outside the image.
    The same check runs on the CUDA kernels (tests/ops/cuda)."""

    def run(cfg, tensors, grad_out):
        out = _torch_deform_conv.deform_conv2d_forward(ConvInputs(*tensors), conv_args(cfg))
        return out, _torch_deform_conv.deform_conv2d_backward(
            grad_out, ConvInputs(*tensors), conv_args(cfg), [True] * 5
        )

    check_nonfinite_offsets(run, dtype)


def test_nan_offset_never_raises_and_stays_local():
    """A NaN offset used to raise an index error from inside embedding_bag (torchvision's CPU op
    crashes the process on this input)."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 4, 6, 6, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    o = torch.zeros(2, 18, 4, 4)
    o[0, 1, 0, 0] = float("nan")  # image 0, kernel point 0, dx, output position (0, 0)
    out = deform_conv2d(x, o, w)
    nan = torch.isnan(out)
    assert nan[0, :, 0, 0].all() and nan.sum() == 5
    clean = o.clone()
    clean[0, 1, 0, 0] = 0.0
    torch.testing.assert_close(out[~nan], deform_conv2d(x, clean, w)[~nan])


# ------------------------------------------------------------------------------------------
# Double backward
# ------------------------------------------------------------------------------------------
DOUBLE_BACKWARD_CASES = {
    "v2_groups": ((3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True),
    "v1_stride_dilation": ((3, 2), (2, 1), (1, 0), (2, 1), 1, 1, False, True),
    "1x1_no_bias": ((1, 1), (1, 1), (0, 0), (1, 1), 1, 1, True, False),
}


@pytest.mark.parametrize("name", list(DOUBLE_BACKWARD_CASES))
def test_gradgradcheck(name):
    """The backward is differentiable (create_graph=True): second derivatives of every input,
    checked against finite differences of the first, away from the integer lines."""
    kernel, stride, padding, dilation, groups, G, mask, bias = DOUBLE_BACKWARD_CASES[name]
    case = make_case(
        2, 4, 4, (5, 4), kernel, stride, padding, dilation, groups, G, mask, bias, torch.float64, far=0.0
    )
    x, off, w, b, m = (t.requires_grad_() if t is not None else None for t in case)
    inputs = [t for t in (x, off, w, b, m) if t is not None]

    def fn(*args):
        it = iter(args)
        x_, off_, w_ = next(it), next(it), next(it)
        b_ = next(it) if bias else None
        m_ = next(it) if mask else None
        return deform_conv2d(x_, off_, w_, b_, stride, padding, dilation, m_)

    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_create_graph_gradients_equal_the_fused_ones():
    case = make_case(2, 4, 6, (6, 5), (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True, torch.float64)
    leaves = [t.requires_grad_() for t in case]
    go = torch.randn(2, 6, 6, 5, dtype=torch.float64)
    out = deform_conv2d(leaves[0], leaves[1], leaves[2], leaves[3], 1, 1, 1, leaves[4])
    fused = torch.autograd.grad(out, leaves, go, retain_graph=True)
    composed = torch.autograd.grad(out, leaves, go, create_graph=True)
    for f, c, name in zip(fused, composed, ("input", "offset", "weight", "bias", "mask")):
        assert c.requires_grad or name == "bias"  # the bias gradient is grad_out's sum: a constant
        torch.testing.assert_close(c.detach(), f, rtol=1e-10, atol=1e-10)


def test_gradient_penalty_training_step():
    """A WGAN-GP-style step through DeformConv2dPack: the penalty's gradient reaches the offset
    predictor and the weights, and one optimiser step lowers the penalty."""
    torch.manual_seed(0)
    layer = DeformConv2dPack(3, 4, 3, padding=1, modulated=True).double()
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.1)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def penalty():
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(layer(xi).square().sum(), xi, create_graph=True)
        return gx.square().sum()

    p0 = penalty()
    opt.zero_grad()
    p0.backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0
    opt.step()
    assert penalty() < p0


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
def _good():
    return make_case(1, 4, 4, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True, torch.float32)


def test_bad_offset_channels():
    x, off, w, b, m = _good()
    with pytest.raises(ValueError, match=r"offset must have shape"):
        deform_conv2d(x, off[:, :-1], w, b, 1, 1, 1, m)


def test_bad_offset_spatial_size():
    x, off, w, b, m = _good()
    with pytest.raises(ValueError, match=r"offset must have shape \(1, 36, 6, 6\)"):
        deform_conv2d(x, off[:, :, :-1], w, b, 1, 1, 1, m)


def test_bad_mask_shape():
    x, off, w, b, m = _good()
    with pytest.raises(ValueError, match=r"mask must have shape \(1, 18, 6, 6\)"):
        deform_conv2d(x, off, w, b, 1, 1, 1, m[:, :9])


def test_input_channels_not_divisible_by_groups():
    x, off, w, b, m = _good()
    with pytest.raises(ValueError, match=r"not a multiple of weight.shape\[1\]=3"):
        deform_conv2d(x, off, torch.randn(4, 3, 3, 3), b, 1, 1, 1, m)


def test_offset_groups_must_divide_channels():
    x = torch.randn(1, 4, 6, 6)
    w = torch.randn(4, 4, 3, 3)
    off = torch.zeros(1, 2 * 3 * 9, 6, 6)  # 3 offset groups for 4 channels
    with pytest.raises(ValueError, match=r"divisible by offset_groups=3"):
        deform_conv2d(x, off, w, None, 1, 1)


def test_non_4d_input():
    x, off, w, b, m = _good()
    with pytest.raises(ValueError, match=r"input must be 4-D \(N, C_in, H, W\)"):
        deform_conv2d(x[0], off, w, b, 1, 1, 1, m)


def test_dtype_mismatch():
    x, off, w, b, m = _good()
    with pytest.raises(TypeError, match=r"offset has dtype torch.float64 but input has torch.float32"):
        deform_conv2d(x, off.double(), w, b, 1, 1, 1, m)


def test_device_mismatch():
    x, off, w, b, m = _good()
    with pytest.raises(ValueError, match=r"weight is on meta but input is on cpu"):
        deform_conv2d(x, off, w.to("meta"), b, 1, 1, 1, m)


def test_unknown_backend():
    x, off, w, b, m = _good()
    with pytest.raises(ValueError, match=r"unknown backend 'triton'; expected one of auto, torch, cupy"):
        deform_conv2d(x, off, w, b, 1, 1, 1, m, backend="triton")


def test_cupy_backend_without_cuda_says_how_to_install():
    from dcn.ops.deform_conv import cupy_unavailable_reason

    if cupy_unavailable_reason() is None:
        pytest.skip("CuPy backend is available here")
    x, off, w, b, m = _good()
    with pytest.raises(
        RuntimeError,
        match=r"backend='cupy' is not available for deform_conv2d: .*pip install -e \.\[cuda13\]",
    ):
        deform_conv2d(x, off, w, b, 1, 1, 1, m, backend="cupy")


# ------------------------------------------------------------------------------------------
# Module
# ------------------------------------------------------------------------------------------
def test_module_v1_at_init_equals_conv2d():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 8, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2)
    layer = DeformConv2dPack.from_conv(conv, offset_groups=3)
    x = torch.randn(2, 6, 9, 8)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    assert layer.conv_offset.out_channels == 2 * 3 * 3 * 2
    assert layer.weight.shape == conv.weight.shape and layer.bias.shape == conv.bias.shape


def test_module_v2_shapes_and_init():
    layer = DeformConv2dPack(4, 6, 3, padding=1, offset_groups=2, modulated=True, bias=False)
    assert layer.conv_offset.out_channels == 3 * 2 * 9
    x = torch.randn(2, 4, 5, 5)
    offset, mask = layer.offsets_and_mask(x)
    assert offset.shape == (2, 36, 5, 5) and mask.shape == (2, 18, 5, 5)
    ref = 0.5 * F.conv2d(x, layer.weight, None, 1, 1)  # sigmoid(0) = 0.5 at init
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
    layer(x).sum().backward()
    assert layer.conv_offset.weight.grad is not None and layer.weight.grad is not None


def test_module_learns_offsets():
    """The offset predictor receives gradient (it is zero-initialised, not frozen)."""
    layer = DeformConv2dPack(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    layer(x).pow(2).sum().backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0


def test_module_repr_and_errors():
    layer = DeformConv2dPack(4, 8, 3, stride=2, padding=1, offset_groups=2, modulated=True, bias=False)
    r = repr(layer)
    assert "4, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)" in r and "(conv_offset): Conv2d" in r
    assert "offset_groups=2" in r and "bias=False" in r and "modulated=True" in r
    with pytest.raises(ValueError, match="divisible by offset_groups=3"):
        DeformConv2dPack(4, 8, 3, offset_groups=3)
    with pytest.raises(TypeError, match="expects an nn.Conv2d"):
        DeformConv2dPack.from_conv(torch.nn.Linear(2, 2))


def test_module_is_a_drop_in_for_torchvision():
    """Same constructor, parameters, initialisation (under the same seed) and forward(input,
    offset, mask) as torchvision.ops.DeformConv2d."""
    torch.manual_seed(0)
    ours = DeformConv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2)
    torch.manual_seed(0)
    theirs = torchvision.ops.DeformConv2d(
        6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2
    )
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight", "bias"}
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)
    x = torch.randn(2, 6, 9, 8)
    off = torch.randn(2, 2 * 3 * 6, 4, 7)  # 3 offset groups, read from the channels
    m = torch.rand(2, 3 * 6, 4, 7)
    torch.testing.assert_close(ours(x, off, m), theirs(x, off, m), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours(x, off), theirs(x, off), rtol=1e-4, atol=1e-4)
    ours.load_state_dict(theirs.state_dict())


def test_module_without_offset_names_the_pack_layer():
    layer = DeformConv2d(3, 4, 3, padding=1)
    with pytest.raises(TypeError, match="needs the offsets .*DeformConv2dPack"):
        layer(torch.randn(1, 3, 5, 5))


@pytest.mark.parametrize("kernel,dilation", [(3, 1), ((2, 3), 1), (4, 2), ((3, 4), (1, 1))])
def test_padding_same_and_valid_as_conv2d(kernel, dilation):
    """'same' (also with even kernels: one more pixel at the right/bottom, as nn.Conv2d) and
    'valid': at zero offsets the layer equals nn.Conv2d with that padding."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8)
    for padding in ("same", "valid"):
        conv = torch.nn.Conv2d(3, 4, kernel, padding=padding, dilation=dilation)
        layer = DeformConv2dPack.from_conv(conv)
        assert layer(x).shape == conv(x).shape
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
        plain = DeformConv2d(3, 4, kernel, padding=padding, dilation=dilation)
        plain.load_state_dict(conv.state_dict())
        off = torch.zeros(2, 2 * plain.weight[0, 0].numel(), *conv(x).shape[-2:])
        torch.testing.assert_close(plain(x, off), conv(x), rtol=1e-5, atol=1e-5)


def test_bad_geometry_is_refused_at_construction():
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        DeformConv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be an int, a pair, 'same' or 'valid', got 'full'"):
        DeformConv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match="padding must be non-negative"):
        DeformConv2d(3, 4, 3, padding=-1)
    with pytest.raises(ValueError, match="kernel_size must be a positive int or a pair"):
        DeformConv2d(3, 4, 0)
    with pytest.raises(ValueError, match="stride must be a positive int or a pair"):
        DeformConv2dPack(3, 4, 3, stride=(1, 0))
    with pytest.raises(ValueError, match="in_channels=3 must be divisible by groups=2"):
        DeformConv2d(3, 4, 3, groups=2)


def test_modulated_pack_is_mmcv_layout():
    """mmcv's ModulatedDeformConv2dPack: conv_offset predicts 3 * G * K channels, the first two
    thirds offsets and the last third mask logits; keys weight, bias, conv_offset.{weight,bias}."""
    layer = ModulatedDeformConv2dPack(4, 6, 3, padding=1, offset_groups=2)
    assert layer.modulated and layer.conv_offset.out_channels == 3 * 2 * 9
    assert set(layer.state_dict()) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
    assert isinstance(layer, DeformConv2dPack) and isinstance(layer, DeformConv2d)


def test_checkpoints_written_before_the_pack_layers_still_load():
    """A SeedNet (DCN v2 layer) and a self-predicting RoI pooling layer saved by dcn before the
    split into DeformConv2d / DeformConv2dPack load unchanged and compute what they computed."""
    from pathlib import Path

    from dcn.backbones import SeedNet
    from dcn.ops import DeformRoIPoolPack

    saved = torch.load(
        Path(__file__).parents[1] / "fixtures" / "state_dicts_before_pack_layers.pt", weights_only=True
    )
    net = SeedNet(in_channels=1, deform={"enabled": True, "modulated": True})
    net.load_state_dict(saved["seed_net"])
    net.eval()
    with torch.no_grad():
        out = list(net(saved["seed_net_input"]).values())[-1]
    torch.testing.assert_close(out, saved["seed_net_output"])
    pool = DeformRoIPoolPack(4, (2, 2), 0.5, hidden_channels=8, modulated=True)
    pool.load_state_dict(saved["deform_roi_pool"])
    with torch.no_grad():
        torch.testing.assert_close(pool(saved["pool_input"], saved["pool_boxes"]), saved["pool_output"])


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        DeformConv2dPack(8, 8, 3, padding=1, modulated=True),
        torch.nn.ReLU(),
    )
    with torch.no_grad():
        model[1].conv_offset.weight.normal_(0, 0.1)  # non-trivial offsets
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    out_eager = model(x)
    out_comp = compiled(x)
    torch.testing.assert_close(out_comp, out_eager, rtol=1e-5, atol=1e-5)
    g_eager = torch.autograd.grad(out_eager.sum(), [x, model[1].conv_offset.weight])
    g_comp = torch.autograd.grad(out_comp.sum(), [x, model[1].conv_offset.weight])
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer", ["pack", "external offsets"])
def test_autocast_with_bfloat16_features_and_float32_weights(layer):
    """Mixed precision (bf16-mixed): the features arrive in bfloat16 from the layer before, the weights
    are float32. The op casts them to one compute dtype (float32 on the PyTorch path), as torchvision's
    autocast kernel does, instead of refusing the dtype mismatch."""
    torch.manual_seed(0)
    stem = torch.nn.Conv2d(3, 8, 3, padding=1)
    if layer == "pack":
        deform = DeformConv2dPack(8, 8, 3, padding=1, modulated=True)
        run = deform
    else:
        deform = DeformConv2d(8, 8, 3, padding=1)
        offset_conv = torch.nn.Conv2d(8, 18, 3, padding=1)
        run = lambda h: deform(h, offset_conv(h))  # noqa: E731
    x = torch.randn(2, 3, 10, 10)
    expected = run(stem(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = stem(x)
        assert features.dtype == torch.bfloat16 and deform.weight.dtype == torch.float32
        out = run(features)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05)
    out.sum().backward()
    assert deform.weight.grad is not None and deform.weight.grad.dtype == torch.float32
    assert stem.weight.grad is not None and torch.isfinite(stem.weight.grad).all()


def test_autocast_still_requires_floating_point_tensors():
    x, off, w, b, m = make_case(
        1, 4, 4, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, torch.float32
    )
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(TypeError, match="mask must be a floating"),
    ):
        deform_conv2d(x, off, w, b, 1, 1, 1, (m > 0.5).to(torch.int64))
