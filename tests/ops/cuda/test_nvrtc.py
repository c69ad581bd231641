"""Every CUDA kernel instantiation compiles with NVRTC (no GPU needed).

The program is built exactly as CuPy builds it at run time (same source text, options and
``name_expressions`` from the op's ``KernelSource``), for the architectures we support. ptxas'
resource report is checked too: a register spill would be a silent performance regression.

NVRTC comes from ``cuda-bindings`` (the dev extra), which loads the NVRTC library of its own CUDA
major; the pip-installed one is torch's. The dev extra cannot pin the major to torch's, so the
tests skip, saying which version to install, where the two majors differ.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Optional

import pytest
import torch

from dcn.ops import _cupy_deform_conv
from dcn.ops._cupy_runtime import KernelSource


def nvrtc_unavailable_reason(bindings: Optional[str], torch_cuda: Optional[str]) -> Optional[str]:
    """Why the NVRTC checks cannot run with cuda-bindings version ``bindings`` (None: not
    installed) beside a torch built for CUDA ``torch_cuda`` (``torch.version.cuda``; None: no CUDA
    build, then any cuda-bindings may work)."""
    if bindings is None:
        return "cuda-bindings (NVRTC) is not installed: pip install -e .[dev]"
    if torch_cuda is None:
        return None
    bindings_major, torch_major = (int(v.split(".")[0]) for v in (bindings, torch_cuda))
    if bindings_major != torch_major:
        return (
            f"cuda-bindings {bindings} needs the CUDA {bindings_major} NVRTC but torch is built for "
            f"CUDA {torch_major}: pip install 'cuda-bindings=={torch_major}.*'"
        )
    return None


def _installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


NVRTC_REASON = nvrtc_unavailable_reason(_installed_version("cuda-bindings"), torch.version.cuda)
if NVRTC_REASON is None:
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        NVRTC_REASON = f"cuda.bindings.nvrtc does not import ({exc})"
needs_nvrtc = pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))

SOURCES = [_cupy_deform_conv.SOURCE]
# sm_80 (A100) and sm_90 (H100) are the targets; sm_75 (T4) exercises the pre-Ampere fallbacks
# (e.g. the bfloat16 conversion without cvt.rn.bf16.f32).
ARCHS = ["sm_75", "sm_80", "sm_90"]


def _check(result, what: str):
    err, *rest = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise AssertionError(f"{what} failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def compile_with_nvrtc(source: KernelSource, arch: str):
    """Compile ``source`` for ``arch``; returns (cubin, log, {name_expression: lowered name}).
    Skips the calling test where NVRTC cannot be used (:data:`NVRTC_REASON`)."""
    if NVRTC_REASON is not None:
        pytest.skip(NVRTC_REASON)
    prog = _check(
        nvrtc.nvrtcCreateProgram(source.code().encode(), source.filename.encode(), 0, [], []),
        "nvrtcCreateProgram",
    )
    try:
        for expr in source.name_expressions():
            _check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr})")
        options = [
            o.encode() for o in (*source.options(), f"--gpu-architecture={arch}", "--ptxas-options=-v")
        ]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        log_text = log.decode(errors="replace").rstrip("\x00 ")
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            pytest.fail(f"NVRTC failed to compile {source.filename} for {arch} ({err}):\n{log_text}")
        lowered = {
            expr: _check(nvrtc.nvrtcGetLoweredName(prog, expr.encode()), "nvrtcGetLoweredName").decode()
            for expr in source.name_expressions()
        }
        size = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin, log_text, lowered
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.filename)
def test_every_kernel_compiles(source: KernelSource, arch: str) -> None:
    cubin, log, lowered = compile_with_nvrtc(source, arch)
    assert len(cubin) > 0
    # 4 dtypes per kernel template, each present in the binary under its lowered name.
    assert len(lowered) == 4 * len(source.kernels)
    for expr, name in lowered.items():
        assert name.encode() in cubin, f"{expr} ({name}) missing from the {arch} binary"
    assert "warning" not in log.lower(), f"NVRTC warnings for {arch}:\n{log}"
    spills = re.findall(r"(\d+) bytes spill stores", log)
    assert spills and all(s == "0" for s in spills), f"register spills for {arch}:\n{log}"


def test_nvrtc_skips_on_a_cuda_major_mismatch():
    assert nvrtc_unavailable_reason("13.5.0", "12.8") == (
        "cuda-bindings 13.5.0 needs the CUDA 13 NVRTC but torch is built for CUDA 12: "
        "pip install 'cuda-bindings==12.*'"
    )
    assert nvrtc_unavailable_reason("12.9.4", "12.8") is None
    assert nvrtc_unavailable_reason("13.0.1", "13.0") is None
    assert nvrtc_unavailable_reason("13.0.1", None) is None  # CPU torch: nothing to match
    assert nvrtc_unavailable_reason(None, "12.8").startswith("cuda-bindings (NVRTC) is not installed")
