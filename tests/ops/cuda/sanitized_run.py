"""Run every shared test case through the deformable-convolution kernels under a memory checker.

Two modes:

* ``python sanitized_run.py CACHE_DIR`` — the host-compiled kernels built with AddressSanitizer and
  UndefinedBehaviorSanitizer, under every launch geometry of ``LAUNCH_MODES`` (used by
  test_host_kernels.py in a subprocess, since ASan must be preloaded into the Python process);
* ``compute-sanitizer python sanitized_run.py --cuda`` — the real kernels on the GPU through CuPy,
  under the geometries of ``CUDA_MODES``, with non-finite and far-outside offsets and both ops
  (run by ``make gpu-check``; set ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` so that every tensor is its
  own allocation and an access past its end is caught rather than landing in a neighbour inside a
  cached block).

Exits non-zero (with the sanitizer report on stderr) on any out-of-bounds access or undefined
behaviour in a kernel; prints the number of cases run otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import host_kernels
import torch
from deform_conv_cases import (
    CONFIGS,
    LAUNCH_MODES,
    NONFINITE_CFG,
    NONFINITE_POINT,
    make_inputs,
    random_grad_out,
    run_kernels,
)

from dcn.ops import _cupy_deform_conv
from dcn.ops._backend import PoolInputs, PoolParams

SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# Launch geometries under compute-sanitizer, which slows every launch down: the grid-stride loops
# and partial channel chunks, where an index error would be.
CUDA_MODES = ("small_grid", "two_channels")


def _run_cases(kernels, device: str, modes=tuple(LAUNCH_MODES)) -> int:
    runs = 0
    defaults = {name: getattr(_cupy_deform_conv, name) for mode in LAUNCH_MODES.values() for name in mode}
    for mode in modes:
        for name, value in {**defaults, **LAUNCH_MODES[mode]}.items():
            setattr(_cupy_deform_conv, name, value)
        for cfg in CONFIGS.values():
            for dtype in DTYPES:
                run_kernels(
                    kernels,
                    cfg,
                    make_inputs(cfg, dtype, device=device),
                    random_grad_out(cfg, dtype, device=device),
                )
                runs += 1
        for value in (float("nan"), float("inf"), -float("inf"), 1e30, -1e30):
            x, offset, mask, weight, bias = make_inputs(NONFINITE_CFG, torch.float32, device=device)
            b, k, i, j = NONFINITE_POINT
            offset[b, 2 * k, i, j] = value
            offset[b, 2 * k + 1, i, j + 1] = value
            run_kernels(
                kernels,
                NONFINITE_CFG,
                (x, offset, mask, weight, bias),
                random_grad_out(NONFINITE_CFG, torch.float32, device=device),
            )
            runs += 1
    return runs


def _run_roi_pool_cases() -> int:
    from roi_pool_cases import make_case

    from dcn.ops import _cupy_deform_roi_pool as roi

    runs = 0
    for dtype in DTYPES:
        for sr, aligned in ((0, True), (2, False)):
            x, rois, off, grad = (t.cuda().to(dtype) for t in make_case(c=5, k=24, seed=3))
            for value in (None, float("nan"), float("inf"), 1e30):
                if value is not None:
                    off[3, 0, 1, 1] = value
                args = ((3, 2), 0.5, sr, 0.2, aligned)
                roi.deform_roi_pool_forward(PoolInputs(x, rois, off), PoolParams(*args))
                roi.deform_roi_pool_backward(grad, PoolInputs(x, rois, off), PoolParams(*args), (True, True))
                runs += 1
    return runs


def main(argv: list[str]) -> int:
    if argv[:1] == ["--cuda"]:
        from dcn.ops import _cupy_runtime

        launch = _cupy_runtime.cupy_launcher(_cupy_deform_conv.SOURCE, torch.device("cuda"))
        runs = _run_cases(launch, "cuda", CUDA_MODES) + _run_roi_pool_cases()
        torch.cuda.synchronize()
    else:
        lib = host_kernels.build(_cupy_deform_conv.SOURCE, Path(argv[0]), SANITIZE)
        runs = _run_cases(host_kernels.HostKernels(_cupy_deform_conv.SOURCE, lib), "cpu")
    print(f"{runs} sanitized runs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
