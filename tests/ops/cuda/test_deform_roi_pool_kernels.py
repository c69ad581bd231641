"""The deformable RoI pooling CUDA kernels: NVRTC compilation, host-compiled runs, GPU runs.

* NVRTC: every instantiation of ``deform_roi_pool.cu`` compiles for sm_80 and sm_90 exactly as CuPy
  builds it (no GPU needed), without warnings or register spills.
* Host: the same source compiled by the host C++ compiler through ``shim/cuda_shim.h`` is passed as
  the launcher to the CuPy backend's own orchestration (``_cupy_deform_roi_pool.forward/backward``),
  which runs the real grid and block serially; forward and gradients must match the PyTorch path.
* GPU: the CuPy backend against the PyTorch path on CUDA tensors; skipped without CUDA + CuPy.
"""

from __future__ import annotations

import re
from pathlib import Path

import host_kernels
import pytest
import torch
from roi_pool_cases import check_nonfinite_offsets, make_case

from dcn.ops import _cupy_deform_roi_pool as cupy_backend
from dcn.ops import _torch_deform_roi_pool as torch_backend
from dcn.ops import deform_roi_pool

ARCHS = ["sm_80", "sm_90"]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.fixture(scope="module")
def roi_pool_kernels(pytestconfig, tmp_path_factory) -> host_kernels.HostKernels:
    """deform_roi_pool.cu compiled for the CPU (a ``Launch`` running threads serially)."""
    if host_kernels.compiler() is None:
        pytest.fail("no host C++ compiler (g++/clang++ or $CXX) for the CUDA kernel checks")
    cache = getattr(pytestconfig, "cache", None)
    cache_dir = Path(cache.mkdir("dcn_cuda_shim")) if cache is not None else tmp_path_factory.mktemp("shim")
    lib = host_kernels.build(cupy_backend.SOURCE, cache_dir)
    return host_kernels.HostKernels(cupy_backend.SOURCE, lib)


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
    if small_grid:  # 2 blocks only: every thread loops over several output elements
        monkeypatch.setattr(cupy_backend, "MAX_BLOCKS", 2)
    x, rois, off, grad = make_case(dtype=dtype, **opts)
    args = ((3, 2), 0.5, sr, 0.2, aligned)
    out = cupy_backend.forward(roi_pool_kernels, x, rois, off, *args)
    ref = torch_backend.deform_roi_pool_forward(x, rois, off, *args)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    assert out.abs().sum() > 0
    g_in, g_off = cupy_backend.backward(roi_pool_kernels, grad, x, rois, off, *args, (True, True))
    r_in, r_off = torch_backend.deform_roi_pool_backward(grad, x, rois, off, *args, (True, True))
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


def test_host_kernels_single_gradient(roi_pool_kernels):
    x, rois, off, grad = make_case(seed=3)
    args = ((3, 2), 0.5, 0, 0.1, True)
    full = torch_backend.deform_roi_pool_backward(grad, x, rois, off, *args, (True, True))
    only_in = cupy_backend.backward(roi_pool_kernels, grad, x, rois, off, *args, (True, False))
    only_off = cupy_backend.backward(roi_pool_kernels, grad, x, rois, off, *args, (False, True))
    assert only_in[1] is None and only_off[0] is None
    torch.testing.assert_close(only_in[0], full[0])
    torch.testing.assert_close(only_off[1], full[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_host_kernels_half_precision(roi_pool_kernels, dtype):
    """16-bit storage, float32 arithmetic: equals the float32 computation on the rounded inputs."""
    x, rois, off, grad = make_case(seed=5, dtype=dtype)
    args = ((3, 2), 0.5, 0, 0.1, True)
    out = cupy_backend.forward(roi_pool_kernels, x, rois, off, *args)
    ref = torch_backend.deform_roi_pool_forward(x.float(), rois.float(), off.float(), *args)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.to(dtype).float(), rtol=0, atol=0)
    g_in, g_off = cupy_backend.backward(roi_pool_kernels, grad, x, rois, off, *args)
    r_in, r_off = torch_backend.deform_roi_pool_backward(
        grad.float(), x.float(), rois.float(), off.float(), *args
    )
    assert g_in.dtype == dtype and g_off.dtype == dtype
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(g_in.float(), r_in, **tol)
    torch.testing.assert_close(g_off.float(), r_off, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_host_kernels_nonfinite_offsets(roi_pool_kernels, dtype):
    check_nonfinite_offsets(
        lambda *a: cupy_backend.forward(roi_pool_kernels, *a),
        lambda *a: cupy_backend.backward(roi_pool_kernels, *a),
        dtype,
    )


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


gpu = pytest.mark.skipif(_gpu_reason() is not None, reason=f"CuPy backend unavailable: {_gpu_reason()}")


@gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gpu_cupy_matches_torch_path(dtype, sampling_ratio):
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
