"""The CUDA kernels, compiled for the CPU through the shim, reproduce the PyTorch backend.

``deform_conv_kernels`` (conftest.py) is the real ``deform_conv.cu`` compiled by the host C++
compiler; it is passed as the kernel launcher to the CuPy backend's own orchestration
(``_cupy_deform_conv.forward`` / ``backward``), so buffer handling, GEMMs, batch chunking and the
launch geometry are those that run on the GPU; only the kernel execution is emulated (serially).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import host_kernels
import pytest
import torch
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
    run_kernels,
    run_reference,
    run_torchvision,
)

from dcn.ops import _cupy_deform_conv as cupy_backend
from dcn.ops import _cupy_deform_roi_pool
from dcn.ops._backend import ConvInputs

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torch_backend(deform_conv_kernels, launch_mode, monkeypatch, name, dtype):
    """Under every launch geometry (conftest's ``launch_mode``), with NaN-filled uninitialised
    buffers: an element left unwritten would show up as NaN."""
    cfg = CONFIGS[name]
    tensors = make_inputs(cfg, dtype)
    grad_out = random_grad_out(cfg, dtype)
    with monkeypatch.context() as m:
        poison_empty(m)
        out, grads = run_kernels(deform_conv_kernels, cfg, tensors, grad_out)
    ref_out, ref_grads = run_reference(cfg, tensors, grad_out)
    assert out.dtype == dtype
    assert_close(out, ref_out, "output", **TOL[dtype])
    for g, r, gname in zip(grads, ref_grads, GRAD_NAMES):
        if g is not None:
            assert g.dtype == dtype, gname
        assert_close(g, r, f"grad {gname}", **TOL[dtype])


def test_integer_positions_match_torchvision(deform_conv_kernels):
    """Samples exactly on pixels, on the last row/column and exactly at -1 / H (outside).

    Gradients at integer positions are one-sided (the bilinear derivative jumps there); dcn follows
    torchvision's convention, so torchvision's CPU op is the reference here.
    """
    cfg = Config(n=2, c_in=4, c_out=3, h=5, w=6, offset_groups=2, padding=(1, 1))
    x, offset, mask, weight, bias = make_inputs(cfg, torch.float64)
    offset = torch.randint(-3, 4, offset.shape, generator=torch.Generator().manual_seed(3)).double()
    grad_out = torch.randn(cfg.n, cfg.c_out, *cfg.out_hw, dtype=torch.float64)
    tensors = (x, offset, mask, weight, bias)
    out, grads = run_kernels(deform_conv_kernels, cfg, tensors, grad_out)
    ref_out, ref_grads = run_torchvision(cfg, tensors, grad_out)
    assert_close(out, ref_out, "output", rtol=1e-12, atol=1e-12)
    for g, r, gname in zip(grads, ref_grads, GRAD_NAMES):
        assert_close(g, r, f"grad {gname}", rtol=1e-12, atol=1e-12)


def test_zero_offsets_equal_conv2d(deform_conv_kernels):
    cfg = Config(mask=False, groups=2, c_in=4, c_out=4, stride=(2, 1), dilation=(1, 2), padding=(1, 2))
    x, offset, _, weight, bias = make_inputs(cfg, torch.float64)
    out = cupy_backend.deform_conv2d_forward(
        ConvInputs(x, torch.zeros_like(offset), None, weight, bias),
        conv_args(cfg),
        launch=deform_conv_kernels,
    )
    expected = torch.nn.functional.conv2d(x, weight, bias, cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
    assert_close(out, expected, "output", rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "needs",
    [
        (True, False, False, False, False),
        (False, True, False, False, False),
        (False, False, True, False, False),
        (False, False, False, True, False),
        (False, False, False, False, True),
        (False, True, True, False, False),
        (True, False, False, True, False),
    ],
)
def test_requested_gradients_only(deform_conv_kernels, needs):
    cfg = CONFIGS["groups_and_offset_groups"]
    tensors = make_inputs(cfg, torch.float64)
    grad_out = torch.randn(cfg.n, cfg.c_out, *cfg.out_hw, dtype=torch.float64)
    _, full = run_kernels(deform_conv_kernels, cfg, tensors, grad_out)
    _, part = run_kernels(deform_conv_kernels, cfg, tensors, grad_out, needs)
    for need, g, f, gname in zip(needs, part, full, GRAD_NAMES):
        if need:
            assert_close(g, f, gname, rtol=1e-12, atol=1e-12)
        else:
            assert g is None, f"{gname} computed although not requested"


def test_mask_gradient_not_returned_without_mask(deform_conv_kernels):
    cfg = replace(CONFIGS["basic"], mask=False)
    tensors = make_inputs(cfg, torch.float64)
    grad_out = torch.randn(cfg.n, cfg.c_out, *cfg.out_hw, dtype=torch.float64)
    _, grads = run_kernels(deform_conv_kernels, cfg, tensors, grad_out)
    assert grads[2] is None


def test_empty_batch(deform_conv_kernels):
    cfg = replace(CONFIGS["basic"], n=0)
    tensors = make_inputs(cfg, torch.float64)
    grad_out = torch.zeros(0, cfg.c_out, *cfg.out_hw, dtype=torch.float64)
    deform_conv_kernels.launches.clear()
    out, grads = run_kernels(deform_conv_kernels, cfg, tensors, grad_out)
    assert out.shape == (0, cfg.c_out, *cfg.out_hw)
    assert deform_conv_kernels.launches == []  # a zero-sized grid is not a valid CUDA launch
    for g, t, gname in zip(grads, tensors, GRAD_NAMES):
        assert g is not None and g.shape == t.shape and not g.any(), gname


def test_non_contiguous_inputs(deform_conv_kernels):
    cfg = CONFIGS["offset_groups"]
    tensors = make_inputs(cfg, torch.float64)
    # Same values, strided memory: transpose a contiguous copy of the transposed tensor back.
    strided = [
        t.transpose(-1, -2).contiguous().transpose(-1, -2) if t is not None and t.dim() == 4 else t
        for t in tensors
    ]
    assert not strided[0].is_contiguous()
    grad_out = torch.randn(cfg.n, cfg.c_out, *cfg.out_hw, dtype=torch.float64)
    grad_out_strided = grad_out.transpose(-1, -2).contiguous().transpose(-1, -2)
    out, grads = run_kernels(deform_conv_kernels, cfg, tensors, grad_out)
    out_s, grads_s = run_kernels(deform_conv_kernels, cfg, strided, grad_out_strided)
    assert_close(out_s, out, "output", rtol=0, atol=0)
    for a, b, gname in zip(grads_s, grads, GRAD_NAMES):
        assert_close(a, b, gname, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_types(deform_conv_kernels, dtype):
    """16-bit storage, float32 arithmetic and accumulation: close to the float64 result on the same
    (rounded) inputs, within the 16-bit output rounding.

    16-bit offsets often put samples exactly on pixels, where the position gradient is one-sided;
    the PyTorch backend's normalised grid can land just below such a point, so the reference is
    torchvision, whose convention dcn's kernels follow exactly.
    """
    cfg = CONFIGS["groups_and_offset_groups"]
    tensors = make_inputs(cfg, dtype)
    grad_out = torch.randn(cfg.n, cfg.c_out, *cfg.out_hw, dtype=torch.float64).to(dtype)
    out, grads = run_kernels(deform_conv_kernels, cfg, tensors, grad_out)
    ref_out, ref_grads = run_torchvision(cfg, tensors, grad_out)
    eps = torch.finfo(dtype).eps
    tol = dict(rtol=8 * eps, atol=8 * eps * ref_out.abs().max().item())
    assert out.dtype == dtype
    assert_close(out, ref_out, "output", **tol)
    for g, r, gname in zip(grads, ref_grads, GRAD_NAMES):
        assert g.dtype == dtype, gname
        assert_close(g, r, f"grad {gname}", rtol=8 * eps, atol=8 * eps * r.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_weight_gradient_is_summed_in_float32(deform_conv_kernels, monkeypatch, dtype):
    """Per-chunk weight gradients that a 16-bit GEMM result would overflow (float16) or round
    (bfloat16), summing to a representable value: exact only with a float32-output GEMM."""
    cfg, tensors, grad_out, expected = half_weight_grad_case(dtype)
    monkeypatch.setattr(cupy_backend, "COLUMN_BUDGET", 1)  # one image per batch chunk
    needs = (False, False, False, True, False)
    _, (_, _, _, g_w, _) = run_kernels(deform_conv_kernels, cfg, tensors, grad_out, needs)
    assert g_w.dtype == dtype
    assert torch.equal(g_w, expected), f"grad weight {g_w.flatten().tolist()}, expected {expected.item()}"


def test_shim_runs_the_launch_configuration(deform_conv_kernels):
    cfg = CONFIGS["groups_and_offset_groups"]
    tensors = make_inputs(cfg, torch.float32)
    grad_out = torch.randn(cfg.n, cfg.c_out, *cfg.out_hw)
    deform_conv_kernels.launches.clear()
    run_kernels(deform_conv_kernels, cfg, tensors, grad_out)
    points = cfg.n * cfg.offset_groups * cfg.kh * cfg.kw * cfg.out_hw[0] * cfg.out_hw[1]
    expected = cupy_backend.sample_launch_config(points, cfg.c_in // cfg.offset_groups)
    assert [name for name, _, _ in deform_conv_kernels.launches] == [
        "dcn::deform_conv2d_im2col<float>",  # forward
        "dcn::deform_conv2d_backward_sample<float>",  # input/offset/mask grads
        "dcn::deform_conv2d_im2col<float>",  # columns for the weight grad
    ]
    for _, grid, block in deform_conv_kernels.launches:
        assert (grid, block) == (expected.grid, expected.block)


# --------------------------------------------------------------------------------------
# Kernel signatures and the launchers' argument check
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source", [cupy_backend.SOURCE, _cupy_deform_roi_pool.SOURCE], ids=lambda s: s.filename
)
def test_signatures_read_from_the_source_match_the_compiler(source, host_kernel_cache):
    """The launchers check arguments against parameter lists parsed from the .cu text: the C++
    compiler's view of the same kernels must agree, parameter by parameter."""
    kernels = host_kernels.HostKernels(source, host_kernels.build(source, host_kernel_cache))
    for kernel in source.kernels:
        parsed = tuple(p.ctype for p in source.signature(kernel))
        assert parsed == kernels.compiled_signature(kernel), kernel


def test_deform_conv_signatures():
    ints = ("batch", "channels", "height", "width", "out_h", "out_w", "kernel_h", "kernel_w")
    ints += ("stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w")
    ints += ("offset_groups", "channels_per_thread")
    im2col = [(p.ctype, p.name) for p in cupy_backend.SOURCE.signature("deform_conv2d_im2col")]
    assert im2col == [("T*", "input"), ("T*", "offset"), ("T*", "mask"), ("T*", "columns")] + [
        ("index_t", n) for n in ints
    ]
    sample = [(p.ctype, p.name) for p in cupy_backend.SOURCE.signature("deform_conv2d_backward_sample")]
    assert sample[:7] == [
        ("T*", "input"),
        ("T*", "offset"),
        ("T*", "mask"),
        ("T*", "grad_columns"),
        ("A*", "grad_input"),  # float32 buffers for the 16-bit types
        ("A*", "grad_offset"),
        ("A*", "grad_mask"),
    ]
    assert sample[7:] == [("index_t", n) for n in ints]


def _backward_sample_args(dtype: torch.dtype, grad_dtype: torch.dtype) -> list:
    """Arguments of deform_conv2d_backward_sample for CONFIGS["basic"] (input gradient only),
    the input gradient buffer in ``grad_dtype``."""
    cfg = CONFIGS["basic"]
    x, offset, mask, weight, _ = make_inputs(cfg, dtype)
    geo = cupy_backend._Geometry(ConvInputs(x, offset, None, weight, None), conv_args(cfg))
    grad_cols = torch.zeros(cfg.c_in * geo.K * cfg.n * geo.L, dtype=dtype)
    grad_input = torch.zeros(x.shape, dtype=grad_dtype)
    return [x, offset, mask, grad_cols, grad_input, None, None, *geo.kernel_ints(cfg.n, 1)]


GRID, BLOCK = (1, 1, 1), (256, 1, 1)  # one block: the grid-stride loop covers the work


def test_host_launcher_rejects_a_wrong_argument_dtype(deform_conv_kernels):
    """A half kernel given a 16-bit gradient buffer where it writes float32 (or a float32 tensor
    where it reads half) would reinterpret memory; the launcher refuses, naming what is wrong."""
    kernel = "deform_conv2d_backward_sample"
    deform_conv_kernels.launches.clear()
    deform_conv_kernels(
        kernel, torch.float16, GRID, BLOCK, _backward_sample_args(torch.float16, torch.float32)
    )
    assert len(deform_conv_kernels.launches) == 1  # the right dtypes run

    half_grad = _backward_sample_args(torch.float16, torch.float16)
    with pytest.raises(TypeError) as err:
        deform_conv_kernels(kernel, torch.float16, GRID, BLOCK, half_grad)
    assert str(err.value) == (
        "dcn::deform_conv2d_backward_sample<dcn::half_t> args[4] (A* grad_input) must have dtype "
        "torch.float32, got torch.float16"
    )
    float_input = _backward_sample_args(torch.float16, torch.float32)
    float_input[0] = float_input[0].float()
    with pytest.raises(
        TypeError, match=r"args\[0\] \(T\* input\) must have dtype torch.float16, got torch.float32"
    ):
        deform_conv_kernels(kernel, torch.float16, GRID, BLOCK, float_input)
    assert len(deform_conv_kernels.launches) == 1  # the rejected calls never ran


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a[:-1], TypeError, "takes 23 arguments, got 22"),
        (
            lambda a: [*a[:7], 2.0, *a[8:]],
            TypeError,
            r"args\[7\] \(index_t batch\) must be an int, got float",
        ),
        (lambda a: [*a[:7], True, *a[8:]], TypeError, "must be an int, got bool"),
        (
            lambda a: [a[0], 0, *a[2:]],
            TypeError,
            r"args\[1\] \(T\* offset\) must be a tensor or None, got int",
        ),
        (
            lambda a: [a[0].to("meta"), *a[1:]],
            ValueError,
            r"args\[0\] \(T\* input\) must be on cpu, got a tensor on meta",
        ),
    ],
    ids=["count", "float_for_int", "bool_for_int", "int_for_pointer", "device"],
)
def test_host_launcher_rejects_malformed_arguments(deform_conv_kernels, change, error, match):
    args = change(_backward_sample_args(torch.float32, torch.float32))
    with pytest.raises(error, match=match):
        deform_conv_kernels("deform_conv2d_backward_sample", torch.float32, GRID, BLOCK, args)


# --------------------------------------------------------------------------------------
# Launch geometry
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("points", [1, 7, 1000, 1 << 18, 10**9, 3 * 10**11])
@pytest.mark.parametrize("group_channels", [1, 3, 64, 1000])
def test_launch_config_covers_all_work(points, group_channels):
    cfg = cupy_backend.sample_launch_config(points, group_channels)
    assert cfg.block[0] * cfg.block[1] * cfg.block[2] <= 1024
    assert 1 <= cfg.grid[0] <= min(cupy_backend.MAX_BLOCKS, 2**31 - 1) and cfg.grid[1:] == (1, 1)
    # The chunks tile the group's channels: all covered, none empty.
    assert cfg.chunks * cfg.channels_per_thread >= group_channels
    assert (cfg.chunks - 1) * cfg.channels_per_thread < group_channels
    # Small problems are split over channels to reach about TARGET_THREADS threads (within the
    # rounding of equal-sized chunks); large ones keep a group's channels in one thread.
    target = cupy_backend.TARGET_THREADS
    threads = cfg.chunks * points
    if points >= target:
        assert cfg.chunks == 1
    else:
        assert min(group_channels * points, target) / 2 <= threads < 2 * target


def test_launch_config_rejects_empty_work():
    with pytest.raises(ValueError, match="points > 0"):
        cupy_backend.sample_launch_config(0, 4)


# --------------------------------------------------------------------------------------
# 16-bit conversions of common.cuh (host path; the device uses the cvt instructions)
# --------------------------------------------------------------------------------------
def _all_16bit_patterns() -> torch.Tensor:
    return torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)


@pytest.mark.parametrize("dtype,name", [(torch.float16, "half"), (torch.bfloat16, "bfloat16")])
def test_16bit_to_float_is_exact_for_every_bit_pattern(deform_conv_kernels, dtype, name):
    bits = _all_16bit_patterns()
    ours = deform_conv_kernels.convert(f"{name}_to_float", bits, torch.float32)
    expected = bits.view(dtype).float()
    nan = expected.isnan()
    assert torch.equal(ours.isnan(), nan)
    assert torch.equal(ours[~nan].view(torch.int32), expected[~nan].view(torch.int32))


@pytest.mark.parametrize("dtype,name", [(torch.float16, "half"), (torch.bfloat16, "bfloat16")])
def test_float_to_16bit_rounds_like_torch(deform_conv_kernels, dtype, name):
    g = torch.Generator().manual_seed(0)
    # Every 16-bit value, the midpoints between neighbours (ties: round to even) and points just
    # around them, random bit patterns (all magnitudes, subnormals, inf, nan) and overflow values.
    exact = _all_16bit_patterns().view(dtype).float()
    exact = exact[exact.isfinite()].unique()
    mids = (exact[:-1].double() + exact[1:].double()) / 2
    mids = mids[(mids.float().double() == mids)].float()  # representable midpoints
    near = torch.cat(
        [
            torch.nextafter(mids, torch.tensor(float("inf"))),
            torch.nextafter(mids, torch.tensor(float("-inf"))),
        ]
    )
    random_bits = torch.randint(-(1 << 31), 1 << 31, (200_000,), generator=g, dtype=torch.int64)
    random_values = random_bits.to(torch.int32).view(torch.float32)
    edges = torch.tensor(
        [
            0.0,
            -0.0,
            65504.0,
            65519.99,
            65520.0,
            1e6,
            -1e6,
            5.96e-8,
            2.98e-8,
            2.99e-8,
            1e-40,
            float("inf"),
            float("-inf"),
            float("nan"),
        ]
    )
    values = torch.cat([exact, mids, near, random_values, edges])
    ours = deform_conv_kernels.convert(f"float_to_{name}", values, torch.int16)
    expected = values.to(dtype)
    nan = expected.isnan()
    assert torch.equal(ours.view(dtype).isnan(), nan)
    mismatch = ours[~nan] != expected[~nan].view(torch.int16)
    assert not mismatch.any(), (
        f"{int(mismatch.sum())} values round differently, e.g. {values[~nan][mismatch][:5].tolist()}"
    )


# --------------------------------------------------------------------------------------
# Memory safety: the same cases under AddressSanitizer + UndefinedBehaviorSanitizer
# --------------------------------------------------------------------------------------
def _sanitizer_preload() -> list[str]:
    """libasan (and the libstdc++ it must precede torch's C++ exceptions with) of the compiler."""
    cxx = host_kernels.compiler()
    libs = []
    for name in ("libasan.so", "libstdc++.so.6"):
        proc = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True)
        path = proc.stdout.strip()
        if proc.returncode != 0 or not os.path.isabs(path):
            return []
        libs.append(path)
    return libs


@pytest.mark.slow
def test_kernels_stay_in_bounds_under_sanitizers(tmp_path):
    """An out-of-bounds read on the GPU returns garbage or nothing at all; on the CPU under ASan it
    is a hard error. Runs every shared case, all dtypes, every launch geometry of LAUNCH_MODES."""
    preload = _sanitizer_preload()
    if not preload:
        pytest.skip(f"{host_kernels.compiler()} has no AddressSanitizer runtime")
    env = dict(
        os.environ,
        LD_PRELOAD=" ".join(preload),
        ASAN_OPTIONS="detect_leaks=0",
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, str(HERE / "sanitized_run.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    report = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("    #"))
    assert proc.returncode == 0, f"sanitizer run failed:\n{report[-6000:]}"
    assert "sanitized runs" in proc.stdout


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_nonfinite_offsets(deform_conv_kernels, launch_mode, dtype):
    check_nonfinite_offsets(lambda cfg, t, g: run_kernels(deform_conv_kernels, cfg, t, g), dtype)
