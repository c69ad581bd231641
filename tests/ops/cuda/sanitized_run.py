"""Run every shared test case through the host-compiled kernels built with AddressSanitizer and
UndefinedBehaviorSanitizer (used by test_host_kernels.py in a subprocess, since ASan must be
preloaded into the Python process).

Usage: python sanitized_run.py CACHE_DIR
Exits non-zero (with the sanitizer report on stderr) on any out-of-bounds access or undefined
behaviour in a kernel; prints the number of cases run otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import host_kernels
from deform_conv_cases import CONFIGS, make_inputs, random_grad_out, run_kernels
from dcn.ops import _cupy_deform_conv

SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")


def main(cache_dir: str) -> int:
    lib = host_kernels.build(_cupy_deform_conv.SOURCE, Path(cache_dir), SANITIZE)
    kernels = host_kernels.HostKernels(_cupy_deform_conv.SOURCE, lib)
    runs = 0
    # One channel per thread with a capped grid (grid-stride loops), then whole groups per thread.
    for overrides in ({"MAX_BLOCKS": 2}, {"TARGET_THREADS": 1}):
        for name, value in overrides.items():
            setattr(_cupy_deform_conv, name, value)
        for cfg in CONFIGS.values():
            for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
                run_kernels(kernels, cfg, make_inputs(cfg, dtype), random_grad_out(cfg, dtype))
                runs += 1
    print(f"{runs} sanitized runs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
