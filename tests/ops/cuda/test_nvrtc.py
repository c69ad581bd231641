"""Every CUDA kernel instantiation compiles with NVRTC (no GPU needed).

The program is built exactly as CuPy builds it at run time (same source text, options and
``name_expressions`` from the op's ``KernelSource``), for the architectures we support. ptxas'
resource report is checked too: a register spill would be a silent performance regression.
"""

from __future__ import annotations

import re

import pytest

from dcn.ops import _cupy_deform_conv
from dcn.ops._cupy_runtime import KernelSource

nvrtc = pytest.importorskip(
    "cuda.bindings.nvrtc", reason="cuda-bindings (NVRTC) is not installed: pip install -e .[dev]"
)

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
    """Compile ``source`` for ``arch``; returns (cubin, log, {name_expression: lowered name})."""
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
