"""The deformable RoI pooling CUDA kernels: NVRTC compilation, host-compiled runs, GPU runs.

* NVRTC: every instantiation of ``deform_roi_pool.cu`` compiles for sm_80 and sm_90 exactly as CuPy
  builds it (no GPU needed), without warnings or register spills.
* Host: the same source compiled by the host C++ compiler through ``shim/cuda_shim.h`` is passed as
  the launcher to the CuPy backend's own orchestration (``_cupy_deform_roi_pool.forward/backward``),
  which runs the real grid and block serially; forward and gradients must match the PyTorch path.
  The public op can be routed to it too (``cupy_on_host``), so its CuPy-path logic (autocast casts,
  the skipped host check during CUDA-graph capture) runs on CPU tensors as it would on a GPU.
* GPU: the CuPy backend against the PyTorch path on CUDA tensors; skipped without CUDA + CuPy.
"""

from __future__ import annotations

import functools
import importlib
import re

import host_kernels
import pytest
import torch
from roi_pool_cases import check_nonfinite_offsets, large_box_case, make_case

from dcn.ops import _cupy_deform_roi_pool as cupy_backend
from dcn.ops import _torch_deform_roi_pool as torch_backend
from dcn.ops import deform_roi_pool
from dcn.ops._backend import PoolInputs, PoolParams

# The module, not the function of the same name that dcn.ops exports.
roi_pool_module = importlib.import_module("dcn.ops.deform_roi_pool")

ARCHS = ["sm_80", "sm_90"]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.fixture(scope="module")
def roi_pool_kernels(host_kernel_cache) -> host_kernels.HostKernels:
    """deform_roi_pool.cu compiled for the CPU (a ``Launch`` running threads serially)."""
    lib = host_kernels.build(cupy_backend.SOURCE, host_kernel_cache)
    return host_kernels.HostKernels(cupy_backend.SOURCE, lib)


@pytest.fixture
def cupy_on_host(roi_pool_kernels, monkeypatch):
    """The public op's ``"cupy"`` backend on CPU tensors: ``deform_roi_pool`` resolves every call to
    it, and its forward and backward run the orchestration with the host-compiled kernels."""
    monkeypatch.setattr(roi_pool_module, "resolve_backend", lambda backend, device, op: "cupy")
    for name in ("deform_roi_pool_forward", "deform_roi_pool_backward"):
        run = getattr(cupy_backend, name)
        monkeypatch.setattr(cupy_backend, name, functools.partial(run, launch=roi_pool_kernels))
    return roi_pool_kernels


def _force_grid_stride(monkeypatch) -> int:
    """Cap the launch at 2 blocks of 32 threads: every thread then loops over several output
    elements (other channels and bins) in the kernels' grid-stride loop. Returns the thread count."""
    monkeypatch.setattr(cupy_backend, "BLOCK_SIZE", 32)
    monkeypatch.setattr(cupy_backend, "MAX_BLOCKS", 2)
    return 64


def _assert_grid_capped(
    kernels: host_kernels.HostKernels, launches: int, elements: int, threads: int
) -> None:
    """The last ``launches`` launches ran ``threads`` threads for ``elements`` (> threads) outputs."""
    assert elements > threads, "the case is too small to exercise the grid-stride loop"
    for _, grid, block in kernels.launches[-launches:]:
        assert grid[0] * block[0] == threads, f"launch grid={grid} block={block} is not capped"


# --------------------------------------------------------------------------------------
# NVRTC
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_with_nvrtc(arch):
    pytest.importorskip(
        "cuda.bindings.nvrtc", reason="cuda-bindings (NVRTC) is not installed: pip install -e .[dev]"
    )
    from test_nvrtc import compile_with_nvrtc  # the deform-conv suite's NVRTC driver (CuPy's options)

    source = cupy_backend.SOURCE
    cubin, log, lowered = compile_with_nvrtc(source, arch)
    assert len(lowered) == 4 * len(source.kernels)  # float, double, half, bfloat16 per kernel
    for expr, name in lowered.items():
        assert name.encode() in cubin, f"{expr} ({name}) missing from the {arch} binary"
    assert "warning" not in log.lower(), f"NVRTC warnings for {arch}:\n{log}"
    spills = re.findall(r"(\d+) bytes spill stores", log)
    assert spills and all(s == "0" for s in spills), f"register spills for {arch}:\n{log}"


# --------------------------------------------------------------------------------------
# Host-compiled kernels vs the PyTorch path
# --------------------------------------------------------------------------------------
CASES = {
    "adaptive_aligned": dict(sampling_ratio=0, aligned=True),
    "sr2_aligned": dict(sampling_ratio=2, aligned=True),
    "adaptive_legacy": dict(sampling_ratio=0, aligned=False),
    "sr3_legacy_no_offset": dict(sampling_ratio=3, aligned=False, offset=False),
    "one_row_map": dict(sampling_ratio=0, aligned=True, hw=(1, 7)),
}


@pytest.mark.parametrize("small_grid", [False, True], ids=["grid", "grid_stride"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CASES))
def test_host_kernels_match_torch_path(roi_pool_kernels, monkeypatch, name, dtype, small_grid):
    opts = dict(CASES[name])
    sr, aligned = opts.pop("sampling_ratio"), opts.pop("aligned")
    threads = _force_grid_stride(monkeypatch) if small_grid else None
    x, rois, off, grad = make_case(dtype=dtype, **opts)
    args = ((3, 2), 0.5, sr, 0.2, aligned)
    out = cupy_backend.deform_roi_pool_forward(
        PoolInputs(x, rois, off), PoolParams(*args), launch=roi_pool_kernels
    )
    ref = torch_backend.deform_roi_pool_forward(PoolInputs(x, rois, off), PoolParams(*args))
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    assert out.abs().sum() > 0
    g_in, g_off = cupy_backend.deform_roi_pool_backward(
        grad, PoolInputs(x, rois, off), PoolParams(*args), (True, True), launch=roi_pool_kernels
    )
    r_in, r_off = torch_backend.deform_roi_pool_backward(
        grad, PoolInputs(x, rois, off), PoolParams(*args), (True, True)
    )
    torch.testing.assert_close(g_in, r_in, **TOL[dtype])
    if off is None:
        assert g_off is None and r_off is None
    else:
        torch.testing.assert_close(g_off, r_off, **TOL[dtype])
    launched = {e for e, _, _ in roi_pool_kernels.launches}
    assert {
        f"dcn::deform_roi_pool_forward<{cupy_backend._cupy_runtime.CTYPES[dtype]}>",
        f"dcn::deform_roi_pool_backward<{cupy_backend._cupy_runtime.CTYPES[dtype]}>",
    } <= launched
    if small_grid:
        _assert_grid_capped(roi_pool_kernels, 2, out.numel(), threads)


def test_host_kernels_single_gradient(roi_pool_kernels):
    x, rois, off, grad = make_case(seed=3)
    args = ((3, 2), 0.5, 0, 0.1, True)
    full = torch_backend.deform_roi_pool_backward(
        grad, PoolInputs(x, rois, off), PoolParams(*args), (True, True)
    )
    only_in = cupy_backend.deform_roi_pool_backward(
        grad, PoolInputs(x, rois, off), PoolParams(*args), (True, False), launch=roi_pool_kernels
    )
    only_off = cupy_backend.deform_roi_pool_backward(
        grad, PoolInputs(x, rois, off), PoolParams(*args), (False, True), launch=roi_pool_kernels
    )
    assert only_in[1] is None and only_off[0] is None
    torch.testing.assert_close(only_in[0], full[0])
    torch.testing.assert_close(only_off[1], full[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_host_kernels_half_precision(roi_pool_kernels, dtype):
    """16-bit storage, float32 arithmetic: equals the float32 computation on the rounded inputs."""
    x, rois, off, grad = make_case(seed=5, dtype=dtype)
    args = ((3, 2), 0.5, 0, 0.1, True)
    out = cupy_backend.deform_roi_pool_forward(
        PoolInputs(x, rois, off), PoolParams(*args), launch=roi_pool_kernels
    )
    ref = torch_backend.deform_roi_pool_forward(
        PoolInputs(x.float(), rois.float(), off.float()), PoolParams(*args)
    )
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.to(dtype).float(), rtol=0, atol=0)
    g_in, g_off = cupy_backend.deform_roi_pool_backward(
        grad, PoolInputs(x, rois, off), PoolParams(*args), launch=roi_pool_kernels
    )
    r_in, r_off = torch_backend.deform_roi_pool_backward(
        grad.float(), PoolInputs(x.float(), rois.float(), off.float()), PoolParams(*args)
    )
    assert g_in.dtype == dtype and g_off.dtype == dtype
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(g_in.float(), r_in, **tol)
    torch.testing.assert_close(g_off.float(), r_off, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_host_kernels_nonfinite_offsets(roi_pool_kernels, dtype):
    check_nonfinite_offsets(
        functools.partial(cupy_backend.deform_roi_pool_forward, launch=roi_pool_kernels),
        functools.partial(cupy_backend.deform_roi_pool_backward, launch=roi_pool_kernels),
        dtype,
    )


@pytest.mark.parametrize("small_grid", [False, True], ids=["grid", "grid_stride"])
@pytest.mark.parametrize("bad_index", [-1.0, 2.0, 1e6])
def test_host_kernels_invalid_batch_index_pools_to_zero(roi_pool_kernels, monkeypatch, bad_index, small_grid):
    """A RoI whose batch index is outside [0, N) (N = 2 here) gives zeros and no gradient; the other
    RoIs are unaffected. The bad RoIs come first, so a thread that stopped at one (instead of moving
    on to its next element) would leave later outputs unwritten in the grid-stride launch."""
    threads = _force_grid_stride(monkeypatch) if small_grid else None
    x, rois, off, grad = make_case(seed=17)
    bad = torch.zeros(rois.shape[0], dtype=torch.bool)
    bad[[0, 3]] = True
    rois = rois.clone()
    rois[bad, 0] = bad_index
    args = ((3, 2), 0.5, 0, 0.2, True)
    out = cupy_backend.deform_roi_pool_forward(
        PoolInputs(x, rois, off), PoolParams(*args), launch=roi_pool_kernels
    )
    g_in, g_off = cupy_backend.deform_roi_pool_backward(
        grad, PoolInputs(x, rois, off), PoolParams(*args), launch=roi_pool_kernels
    )
    if small_grid:
        _assert_grid_capped(roi_pool_kernels, 2, out.numel(), threads)
    good = ~bad
    ref = torch_backend.deform_roi_pool_forward(PoolInputs(x, rois[good], off[good]), PoolParams(*args))
    r_in, r_off = torch_backend.deform_roi_pool_backward(
        grad[good], PoolInputs(x, rois[good], off[good]), PoolParams(*args)
    )
    assert (out[bad] == 0).all() and (g_off[bad] == 0).all()
    torch.testing.assert_close(out[good], ref, **TOL[torch.float64])
    torch.testing.assert_close(g_in, r_in, **TOL[torch.float64])
    torch.testing.assert_close(g_off[good], r_off, **TOL[torch.float64])


BF16 = dict(rtol=2**-8, atol=1e-5)  # one rounding of a float32 result to bfloat16


@pytest.mark.parametrize("feature_dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_autocast_keeps_boxes_and_offsets_float32(cupy_on_host, feature_dtype):
    """Under autocast the CuPy path reads bfloat16 features but float32 boxes and offsets: with boxes
    at 512-1024 px the result is the float32 computation on the bfloat16 features, rounded once. The
    old behaviour (boxes and offsets cast to bfloat16, whose steps are 4 px there) fails the check."""
    x, rois, off, grad = large_box_case()
    x, off = x.to(feature_dtype).requires_grad_(), off.clone().requires_grad_()
    args = ((3, 3), 1 / 8, 2, 0.1, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_roi_pool(x, rois, off, *args[:4], aligned=args[4])
    assert out.dtype == torch.bfloat16
    assert cupy_on_host.launches[-1][0] == "dcn::deform_roi_pool_forward<dcn::bfloat16_t>"
    features = x.detach().bfloat16().float()
    ref = torch_backend.deform_roi_pool_forward(PoolInputs(features, rois, off.detach()), PoolParams(*args))
    torch.testing.assert_close(out.float(), ref, **BF16)

    old = cupy_backend.deform_roi_pool_forward(
        PoolInputs(x.detach().bfloat16(), rois.bfloat16(), off.detach().bfloat16()),
        PoolParams(*args),
        launch=cupy_on_host,
    )
    with pytest.raises(AssertionError):
        torch.testing.assert_close(old.float(), ref, **BF16)

    out.backward(grad.bfloat16())
    r_in, r_off = torch_backend.deform_roi_pool_backward(
        grad.bfloat16().float(), PoolInputs(features, rois, off.detach()), PoolParams(*args)
    )
    assert x.grad.dtype == feature_dtype and off.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad.float(), r_in, **BF16)  # accumulated in float32, stored in bfloat16
    torch.testing.assert_close(off.grad, r_off, rtol=1e-5, atol=1e-5)  # float32 throughout


def test_invalid_batch_index_while_capturing_pools_to_zero(cupy_on_host, monkeypatch):
    """While a CUDA graph is captured the public op skips its host-side check of the batch indices
    (a device-to-host copy is an error then) and the kernels pool an invalid RoI to zero. Outside a
    capture the same call is an error."""
    x, rois, off, grad = make_case(seed=19, dtype=torch.float32)
    rois = rois.clone()
    rois[2, 0] = 5.0  # N = 2
    with pytest.raises(ValueError, match="batch indices"):
        deform_roi_pool(x, rois, off, (3, 2), 0.5)
    monkeypatch.setattr(roi_pool_module, "_capturing_cuda_graph", lambda device: True)
    off = off.clone().requires_grad_()
    out = deform_roi_pool(x, rois, off, (3, 2), 0.5)
    out.backward(grad)
    assert (out[2] == 0).all() and (off.grad[2] == 0).all()
    ref = torch_backend.deform_roi_pool_forward(
        PoolInputs(x, rois[:2], off.detach()[:2]), PoolParams((3, 2), 0.5, 0, 0.1, True)
    )
    torch.testing.assert_close(out[:2], ref, **TOL[torch.float32])


def test_launch_config():
    assert cupy_backend.launch_config(1) == ((1, 1, 1), (256, 1, 1))
    assert cupy_backend.launch_config(257) == ((2, 1, 1), (256, 1, 1))
    assert cupy_backend.launch_config(1 << 40)[0][0] == cupy_backend.MAX_BLOCKS
    with pytest.raises(ValueError):
        cupy_backend.launch_config(0)


# --------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------
def _gpu_reason():
    if not torch.cuda.is_available():
        return "no CUDA device"
    return cupy_backend.unavailable_reason()


def gpu(test):
    """A GPU test: marked ``gpu`` (``-m gpu`` selects it, ``DCN_REQUIRE_CUPY=1`` fails its skip) and
    skipped with the reason where the CuPy backend cannot run."""
    skip = pytest.mark.skipif(_gpu_reason() is not None, reason=f"CuPy backend unavailable: {_gpu_reason()}")
    return pytest.mark.gpu(skip(test))


@gpu
@pytest.mark.parametrize("small_grid", [False, True], ids=["grid", "grid_stride"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gpu_cupy_matches_torch_path(dtype, sampling_ratio, small_grid, monkeypatch):
    if small_grid:  # the host tests' launch mode: each thread loops over many output elements
        _force_grid_stride(monkeypatch)
    x, rois, off, grad = make_case(c=16, hw=(20, 24), k=64, output_size=(7, 7), seed=7)
    x, rois, off, grad = (t.cuda() for t in (x, rois, off, grad))
    xs, offs = x.to(dtype).requires_grad_(), off.to(dtype).requires_grad_()
    out = deform_roi_pool(xs, rois.to(dtype), offs, 7, 0.5, sampling_ratio, backend="cupy")
    gx, goff = torch.autograd.grad(out, (xs, offs), grad.to(dtype))
    xr, offr = x.to(dtype).float().requires_grad_(), off.to(dtype).float().requires_grad_()
    ref = deform_roi_pool(xr, rois.to(dtype).float(), offr, 7, 0.5, sampling_ratio, backend="torch")
    rx, roff = torch.autograd.grad(ref, (xr, offr), grad.to(dtype).float())
    tol = {torch.float64: 1e-5, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    assert out.dtype == dtype and gx.dtype == dtype and goff.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(gx.float(), rx, rtol=tol, atol=tol)
    torch.testing.assert_close(goff.float(), roff, rtol=tol, atol=tol * 10)


@gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_gpu_nonfinite_offsets(dtype):
    check_nonfinite_offsets(
        cupy_backend.deform_roi_pool_forward, cupy_backend.deform_roi_pool_backward, dtype, device="cuda"
    )


@gpu
def test_gpu_inputs_unmodified():
    x, rois, off, grad = (t.cuda() for t in make_case(c=8, hw=(16, 16), k=32, seed=9, dtype=torch.float32))
    before = [t.clone() for t in (x, rois, off, grad)]
    xs, offs = x.requires_grad_(), off.requires_grad_()
    out = deform_roi_pool(xs, rois, offs, (3, 2), 0.5, 0, backend="cupy")
    out.backward(grad)
    for t, b, name in zip((x, rois, off, grad), before, ("input", "rois", "offset", "grad")):
        assert torch.equal(t.detach(), b), f"{name} was modified"


@gpu
def test_gpu_auto_backend_and_roi_align():
    from torchvision.ops import roi_align

    x, rois, _, _ = make_case(c=8, hw=(16, 16), k=32, output_size=(7, 7), seed=9, dtype=torch.float32)
    x, rois = x.cuda(), rois.cuda()
    out = deform_roi_pool(x, rois, None, 7, 0.5, 0)  # auto -> cupy
    torch.testing.assert_close(out, roi_align(x, rois, 7, 0.5, 0, aligned=True), rtol=1e-5, atol=1e-5)


@gpu
def test_gpu_autocast_keeps_large_boxes_float32():
    x, rois, off, _ = (t.cuda() for t in large_box_case())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = deform_roi_pool(x, rois, off, 3, 1 / 8, 2, backend="cupy")
    assert out.dtype == torch.bfloat16
    ref = deform_roi_pool(x.bfloat16().float(), rois, off, 3, 1 / 8, 2, backend="cupy")
    torch.testing.assert_close(out.float(), ref, **BF16)


@gpu
def test_gpu_cuda_graph_capture_with_an_invalid_batch_index():
    """The op captures into a CUDA graph (no host sync); a RoI with a batch index outside [0, N)
    pools to zero on replay, the others as in eager mode."""
    x, rois, off, _ = (t.cuda() for t in make_case(seed=21, dtype=torch.float32))
    rois = rois.clone()
    rois[2, 0] = 5.0  # N = 2
    keep = torch.arange(rois.shape[0], device="cuda") != 2
    ref = deform_roi_pool(x, rois[keep], off[keep], (3, 2), 0.5, backend="cupy")  # also loads the kernels
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = deform_roi_pool(x, rois, off, (3, 2), 0.5, backend="cupy")
    graph.replay()
    torch.cuda.synchronize()
    assert (out[2] == 0).all()
    torch.testing.assert_close(out[keep], ref)


@gpu
def test_gpu_deterministic_backward_is_bitwise_reproducible():
    x, rois, off, grad = (
        t.cuda() for t in make_case(c=16, hw=(20, 24), k=64, output_size=(7, 7), seed=7, dtype=torch.float32)
    )

    def grads():
        xs, offs = x.clone().requires_grad_(), off.clone().requires_grad_()
        out = deform_roi_pool(xs, rois, offs, 7, 0.5, 2, backend="cupy")
        return torch.autograd.grad(out, (xs, offs), grad)

    torch.use_deterministic_algorithms(True)
    try:
        first, second = grads(), grads()
    finally:
        torch.use_deterministic_algorithms(False)
    fused = grads()
    for name, a, b, f in zip(("input", "offset"), first, second, fused):
        assert torch.equal(a, b), f"grad {name} differs between two runs in deterministic mode"
        torch.testing.assert_close(a, f, rtol=1e-4, atol=1e-4)
