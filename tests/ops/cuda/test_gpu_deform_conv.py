"""CuPy backend on a CUDA device: against the PyTorch backend, torchvision's CUDA op and gradcheck.

The cases and launch geometries are those of the host-kernel tests (deform_conv_cases.py), with
NaN-filled uninitialised buffers. Skipped (with the reason) where there is no CUDA device or the
CuPy kernels cannot run; with ``DCN_REQUIRE_CUPY=1`` those skips are failures (conftest.py). Needs
only torch, torchvision, CuPy and pytest: run with ``--confcutdir=tests/ops/cuda``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pytest
import torch
import torchvision
from deform_conv_cases import (
    CONFIGS,
    GRAD_NAMES,
    TOL,
    Config,
    assert_close,
    check_nonfinite_offsets,
    conv_args,
    half_weight_grad_case,
    make_inputs,
    poison_empty,
    random_grad_out,
    run_reference,
    run_torchvision,
)

from dcn.ops import DeformConv2dPack, _cupy_deform_conv, _cupy_runtime, deform_conv2d
from dcn.ops._backend import ConvInputs
from dcn.ops._dispatch import resolve_backend

_REASON = _cupy_deform_conv.unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a CUDA device and CuPy: {_REASON}"),
]

CUDA = "cuda"


def cupy_run(cfg, tensors, grad_out, needs=(True,) * 5):
    out = _cupy_deform_conv.deform_conv2d_forward(ConvInputs(*tensors), conv_args(cfg))
    grads = _cupy_deform_conv.deform_conv2d_backward(
        grad_out, ConvInputs(*tensors), conv_args(cfg), list(needs)
    )
    return out, grads


def fractional_offsets(offset: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Offsets whose sample positions (integer grid + offset) have fractional parts in [0.2, 0.8],
    away from the points where bilinear interpolation is not differentiable."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(offset.shape, generator=g, dtype=torch.float64)
    return (offset.double().cpu().floor() + 0.2 + 0.6 * u).to(offset.device, offset.dtype)


def public_grads(fn, tensors, grad_out):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    out.backward(grad_out)
    return out.detach(), tuple(t.grad if t is not None else None for t in leaves)


def dcn_cupy(x, offset, mask, weight, bias, cfg):
    return deform_conv2d(x, offset, weight, bias, cfg.stride, cfg.padding, cfg.dilation, mask, backend="cupy")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torch_backend(launch_mode, monkeypatch, name, dtype):
    """Under every launch geometry (several channels per thread, grid-stride loops, batch chunks),
    with NaN-filled uninitialised buffers: an element left unwritten would show up as NaN."""
    cfg = CONFIGS[name]
    tensors = make_inputs(cfg, dtype, device=CUDA)
    grad_out = random_grad_out(cfg, dtype, device=CUDA)
    with monkeypatch.context() as m:
        poison_empty(m)
        out, grads = cupy_run(cfg, tensors, grad_out)
    ref_out, ref_grads = run_reference(cfg, tensors, grad_out)
    assert_close(out, ref_out, "output", **TOL[dtype])
    for g, r, gname in zip(grads, ref_grads, GRAD_NAMES):
        assert_close(g, r, f"grad {gname}", **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_nonfinite_offsets(launch_mode, dtype):
    check_nonfinite_offsets(lambda cfg, t, g: cupy_run(cfg, t, g), dtype, device=CUDA)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_nonfinite_offsets_torch_backend(dtype):
    """The PyTorch path on CUDA tensors (its ATen fallback) follows the same NaN/Inf rules."""
    from dcn.ops import _torch_deform_conv as torch_backend

    def run(cfg, t, g):
        out = torch_backend.deform_conv2d_forward(ConvInputs(*t), conv_args(cfg))
        return out, torch_backend.deform_conv2d_backward(g, ConvInputs(*t), conv_args(cfg), [True] * 5)

    check_nonfinite_offsets(run, dtype, device=CUDA)


@pytest.mark.parametrize("backend", ["cupy", "torch"])
def test_double_backward(backend):
    """create_graph=True gradients are differentiable on CUDA (composed from PyTorch operations)
    and equal the fused kernels' first-order gradients."""
    cfg = Config(n=2, c_in=4, c_out=4, h=5, w=4, groups=2, offset_groups=2, mask=True)
    x, offset, m, weight, bias = make_inputs(cfg, torch.float64, device=CUDA)
    inputs = [t.requires_grad_() for t in (x, fractional_offsets(offset), m, weight, bias)]

    def fn(x_, off_, m_, w_, b_):
        return deform_conv2d(x_, off_, w_, b_, cfg.stride, cfg.padding, cfg.dilation, m_, backend=backend)

    out = fn(*inputs)
    go = random_grad_out(cfg, torch.float64, device=CUDA)
    fused = torch.autograd.grad(out, inputs, go, retain_graph=True)
    composed = torch.autograd.grad(out, inputs, go, create_graph=True)
    for f, c, name in zip(fused, composed, GRAD_NAMES):
        assert_close(c.detach(), f, f"grad {name}", rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, nondet_tol=1e-10)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_inputs_unmodified(name):
    """Forward and backward through the public op leave every input bit-identical."""
    cfg = CONFIGS[name]
    tensors = make_inputs(cfg, torch.float32, device=CUDA)
    grad_out = random_grad_out(cfg, torch.float32, device=CUDA)
    before = [t.clone() if t is not None else None for t in (*tensors, grad_out)]
    leaves = [t.requires_grad_() if t is not None else None for t in tensors]
    out = dcn_cupy(*leaves, cfg)
    out.backward(grad_out)
    for t, b, tname in zip((*tensors, grad_out), before, (*GRAD_NAMES, "grad_out")):
        if t is not None:
            assert torch.equal(t.detach(), b), f"{tname} was modified"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "name", ["basic", "groups_and_offset_groups", "stride_dilation_odd", "far_outside", "random3"]
)
def test_matches_torchvision_cuda(name, dtype):
    cfg = CONFIGS[name]
    tensors = make_inputs(cfg, dtype, device=CUDA)
    grad_out = random_grad_out(cfg, dtype, device=CUDA)
    out, grads = public_grads(lambda *t: dcn_cupy(*t, cfg), tensors, grad_out)

    def tv(x, offset, mask, weight, bias):
        return torchvision.ops.deform_conv2d(
            x, offset, weight, bias, cfg.stride, cfg.padding, cfg.dilation, mask
        )

    ref_out, ref_grads = public_grads(tv, tensors, grad_out)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    assert_close(out, ref_out, "output", **tol)
    for g, r, gname in zip(grads, ref_grads, GRAD_NAMES):
        assert_close(g, r, f"grad {gname}", **tol)


def test_integer_positions_match_torchvision_cuda():
    """Samples on pixels and exactly at -1: same one-sided gradients as torchvision."""
    cfg = Config(n=2, c_in=4, c_out=3, h=5, w=6, offset_groups=2)
    x, offset, mask, weight, bias = make_inputs(cfg, torch.float64, device=CUDA)
    offset = torch.randint(-3, 4, offset.shape, device=CUDA).double()
    tensors = (x, offset, mask, weight, bias)
    grad_out = random_grad_out(cfg, torch.float64, device=CUDA)
    out, grads = cupy_run(cfg, tensors, grad_out)
    ref_out, ref_grads = run_torchvision(cfg, [t.cpu() for t in tensors], grad_out.cpu())
    assert_close(out.cpu(), ref_out, "output", rtol=1e-12, atol=1e-12)
    for g, r, gname in zip(grads, ref_grads, GRAD_NAMES):
        assert_close(g.cpu(), r, f"grad {gname}", rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_autocast(dtype):
    """Under autocast the kernels run in the autocast dtype (float32 accumulation inside)."""
    cfg = Config(n=2, c_in=16, c_out=8, h=12, w=11, offset_groups=2, groups=2)
    tensors = make_inputs(cfg, torch.float32, device=CUDA)
    grad_out = random_grad_out(cfg, torch.float32, device=CUDA)
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    with torch.autocast(CUDA, dtype=dtype):
        out = dcn_cupy(*leaves, cfg)
    assert out.dtype == dtype
    out.float().backward(grad_out)
    # Reference: float64 on the same 16-bit-rounded values (torchvision: same conventions at the
    # integer positions that 16-bit offsets can hit).
    rounded = [t.to(dtype).cpu() for t in tensors]
    ref_out, ref_grads = run_torchvision(cfg, rounded, grad_out.to(dtype).cpu())
    rel = 1e-2 if dtype == torch.float16 else 4e-2
    err = (out.double().cpu() - ref_out).norm() / ref_out.norm()
    assert err < rel, f"output: relative error {err:.3g}"
    for leaf, r, gname in zip(leaves, ref_grads, GRAD_NAMES):
        assert leaf.grad.dtype == torch.float32, gname  # gradients flow back to the fp32 leaves
        err = (leaf.grad.double().cpu() - r).norm() / r.norm()
        assert err < rel, f"grad {gname}: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_weight_gradient_is_summed_in_float32(monkeypatch, dtype):
    """cuBLAS with float32 output (torch.bmm(..., out_dtype)): per-chunk weight gradients that a
    16-bit result would overflow (float16) or round (bfloat16) still sum exactly."""
    cfg, tensors, grad_out, expected = half_weight_grad_case(dtype, device=CUDA)
    monkeypatch.setattr(_cupy_deform_conv, "COLUMN_BUDGET", 1)  # one image per batch chunk
    _, (_, _, _, g_w, _) = cupy_run(cfg, tensors, grad_out, (False, False, False, True, False))
    assert g_w.dtype == dtype
    assert torch.equal(g_w, expected), f"grad weight {g_w.flatten().tolist()}, expected {expected.item()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_channels_last_inputs(dtype):
    """Channels-last input, offset, mask, weight and grad_out give the contiguous results."""
    cfg = CONFIGS["groups_and_offset_groups"]
    tensors = make_inputs(cfg, dtype, device=CUDA)
    grad_out = random_grad_out(cfg, dtype, device=CUDA)
    out, grads = public_grads(lambda *t: dcn_cupy(*t, cfg), tensors, grad_out)
    channels_last = [t.to(memory_format=torch.channels_last) if t.dim() == 4 else t for t in tensors]
    assert not channels_last[0].is_contiguous()
    out_cl, grads_cl = public_grads(
        lambda *t: dcn_cupy(*t, cfg), channels_last, grad_out.to(memory_format=torch.channels_last)
    )
    # Same kernels on the same values, but atomics may sum in another order (and a GEMM algorithm
    # may depend on alignment): equal up to rounding.
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    assert_close(out_cl, out, "output", **tol)
    for g, r, gname in zip(grads_cl, grads, GRAD_NAMES):
        assert_close(g, r, f"grad {gname}", **tol)


@pytest.mark.parametrize("mask", [False, True], ids=["v1", "v2"])
def test_gradcheck_float64(mask):
    cfg = Config(
        n=2,
        c_in=4,
        c_out=4,
        h=5,
        w=4,
        groups=2,
        offset_groups=2,
        stride=(2, 1),
        dilation=(1, 2),
        padding=(1, 2),
        mask=mask,
    )
    x, offset, m, weight, bias = make_inputs(cfg, torch.float64, device=CUDA)
    offset = fractional_offsets(offset)
    inputs = [t.requires_grad_() for t in (x, offset, m, weight, bias) if t is not None]

    def fn(*args):
        it = iter(args)
        x_, off_ = next(it), next(it)
        m_ = next(it) if mask else None
        w_, b_ = next(it), next(it)
        return dcn_cupy(x_, off_, m_, w_, b_, cfg)

    # The input gradient is scattered with atomics, whose summation order varies between runs.
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, nondet_tol=1e-12)


def test_batch_33_and_batch_chunks(monkeypatch):
    cfg = replace(CONFIGS["groups_and_offset_groups"], n=33)
    tensors = make_inputs(cfg, torch.float32, device=CUDA)
    grad_out = random_grad_out(cfg, torch.float32, device=CUDA)
    ref_out, ref_grads = run_reference(cfg, tensors, grad_out)
    out, grads = cupy_run(cfg, tensors, grad_out)
    # A column budget of ~4 images: 9 batch chunks, the last one partial.
    per_image = cfg.c_in * cfg.kh * cfg.kw * cfg.out_hw[0] * cfg.out_hw[1]
    monkeypatch.setattr(_cupy_deform_conv, "COLUMN_BUDGET", 4 * per_image)
    out_chunked, grads_chunked = cupy_run(cfg, tensors, grad_out)
    for o in (out, out_chunked):
        assert_close(o, ref_out, "output", **TOL[torch.float32])
    for gs in (grads, grads_chunked):
        for g, r, gname in zip(gs, ref_grads, GRAD_NAMES):
            assert_close(g, r, f"grad {gname}", **TOL[torch.float32])


def test_no_host_synchronisation():
    cfg = CONFIGS["groups_and_offset_groups"]
    tensors = make_inputs(cfg, torch.float32, device=CUDA)
    grad_out = random_grad_out(cfg, torch.float32, device=CUDA)
    cupy_run(cfg, tensors, grad_out)  # compile / load the module outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cupy_run(cfg, tensors, grad_out)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_runs_on_the_current_stream():
    cfg = CONFIGS["basic"]
    tensors = make_inputs(cfg, torch.float32, device=CUDA)
    grad_out = random_grad_out(cfg, torch.float32, device=CUDA)
    expected, expected_grads = cupy_run(cfg, tensors, grad_out)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # Inputs produced on the side stream right before the op: reading them from another stream
        # would race with this (long) kernel.
        big = torch.randn(4096, 4096, device=CUDA)
        big = big @ big
        scaled = [t * 1.0 if t is not None else None for t in tensors]
        out, grads = cupy_run(cfg, scaled, grad_out * 1.0)
    side.synchronize()
    assert_close(out, expected, "output", rtol=0, atol=0)
    for g, e, gname in zip(grads, expected_grads, GRAD_NAMES):
        assert_close(g, e, gname, rtol=1e-6, atol=1e-6)  # atomics: summation order may differ


def test_availability_check_loaded_every_kernel():
    """The check behind _REASON compiled the module and fetched all its kernel functions, so no
    launch compiles (e.g. a first backward inside a CUDA-graph capture)."""
    functions = _cupy_runtime._modules[(_cupy_deform_conv.SOURCE.filename, torch.cuda.current_device())]
    assert sorted(functions) == sorted(_cupy_deform_conv.SOURCE.name_expressions())


def test_auto_backend_selects_cupy_for_cuda_tensors(monkeypatch):
    # The first "auto" on a device runs the self-check (which calls the kernels): settle it first.
    assert resolve_backend("auto", torch.device(CUDA)) == "cupy"
    calls = []
    real = _cupy_deform_conv.deform_conv2d_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_cupy_deform_conv, "deform_conv2d_forward", counting)
    cfg = CONFIGS["basic"]
    x, offset, mask, weight, bias = make_inputs(cfg, torch.float32, device=CUDA)
    deform_conv2d(x, offset, weight, bias, cfg.stride, cfg.padding, cfg.dilation, mask)
    assert calls == [1]
    assert resolve_backend("auto", x.device) == "cupy"


def test_opcheck():
    cfg = CONFIGS["offset_groups"]
    x, offset, mask, weight, bias = make_inputs(cfg, torch.float32, device=CUDA)
    args = (
        x.requires_grad_(),
        offset.requires_grad_(),
        mask.requires_grad_(),
        weight.requires_grad_(),
        bias.requires_grad_(),
        list(cfg.stride),
        list(cfg.padding),
        list(cfg.dilation),
        cfg.groups,
        cfg.offset_groups,
        "cupy",
    )
    torch.library.opcheck(torch.ops.dcn.deform_conv2d.default, args)


def _module_and_input(seed=0):
    torch.manual_seed(seed)
    layer = DeformConv2dPack(8, 16, 3, padding=1, offset_groups=2, modulated=True, backend="cupy").to(CUDA)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.1)
    x = torch.randn(4, 8, 20, 18, device=CUDA)
    return layer, x


def test_cuda_graph_capture_forward_backward():
    layer, x = _module_and_input()
    static_x = x.clone().requires_grad_()
    params = list(layer.parameters())

    def step():
        out = layer(static_x)
        grads = torch.autograd.grad(out.square().sum(), [static_x, *params])
        return out, grads

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (kernel compilation, allocator) outside the capture
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_grads = step()

    new_x = torch.randn_like(x)
    with torch.no_grad():
        static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    eager_x = new_x.clone().requires_grad_()
    eager_out = layer(eager_x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), [eager_x, *params])
    torch.testing.assert_close(static_out, eager_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(static_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_torch_compile_fullgraph():
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("Triton (torch.compile's GPU code generator) needs a C compiler at run time")
    # float64: in float32 the compiled and eager nn.Conv2d may pick different (TF32) algorithms,
    # whose differences flip a few ReLU gates and hide what this test checks.
    layer, x = _module_and_input(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), layer, torch.nn.ReLU()).to(CUDA)
    model, x = model.double(), x.double()
    compiled = torch.compile(model, fullgraph=True)
    x = x.requires_grad_()
    out_eager, out_comp = model(x), compiled(x)
    torch.testing.assert_close(out_comp, out_eager, rtol=1e-10, atol=1e-10)
    g_eager = torch.autograd.grad(out_eager.sum(), [x, layer.conv_offset.weight])
    g_comp = torch.autograd.grad(out_comp.sum(), [x, layer.conv_offset.weight])
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_column_buffer_beyond_2_31_elements():
    """One image whose column buffer has > 2^31 elements: 64-bit indexing end to end."""
    cfg = Config(
        n=1, c_in=16, c_out=4, h=3900, w=3900, offset_groups=1, mask=True, bias=True, offset_scale=1.5
    )
    per_image = cfg.c_in * cfg.kh * cfg.kw * cfg.out_hw[0] * cfg.out_hw[1]
    assert per_image > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 48 * 2**30:
        pytest.skip(f"needs ~48 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    tensors = make_inputs(cfg, torch.float32, device=CUDA)
    grad_out = random_grad_out(cfg, torch.float32, device=CUDA)
    needs = (True, True, True, False, False)  # the sampling kernels: input, offset, mask grads
    out, grads = cupy_run(cfg, tensors, grad_out, needs)
    grads = [g.cpu() if g is not None else None for g in grads]
    out = out.cpu()
    torch.cuda.empty_cache()
    ref_out = _torch_backend_forward(cfg, tensors)
    assert_close(out, ref_out, "output", rtol=1e-4, atol=1e-3)
    ref_grads = _torch_backend_grads(cfg, tensors, grad_out, needs)
    for g, r, gname in zip(grads, ref_grads, GRAD_NAMES):
        if r is not None:
            assert_close(g, r, f"grad {gname}", rtol=1e-4, atol=1e-3)


def _torch_backend_forward(cfg, tensors):
    from dcn.ops import _torch_deform_conv

    return _torch_deform_conv.deform_conv2d_forward(ConvInputs(*tensors), conv_args(cfg)).cpu()


def _torch_backend_grads(cfg, tensors, grad_out, needs):
    from dcn.ops import _torch_deform_conv

    grads = _torch_deform_conv.deform_conv2d_backward(
        grad_out, ConvInputs(*tensors), conv_args(cfg), list(needs)
    )
    return [g.cpu() if g is not None else None for g in grads]
