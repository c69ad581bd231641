"""Deterministic mode: are the gradients of dcn's ops bit-identical from run to run, and at what cost?

    CUBLAS_WORKSPACE_CONFIG=:4096:8 python benchmarks/determinism.py [--device cuda|cpu] [--reps 10] [--tiny]

Under ``torch.use_deterministic_algorithms(True)`` it runs forward+backward of ``dcn.ops.deform_conv2d``
(modulated, 3x3) and ``dcn.ops.deform_roi_pool`` (with offsets) twice on the same inputs, for each backend
that runs on the device, and compares every gradient bit for bit. It then times the backward (median of
``--reps``; CUDA events on a GPU) in deterministic and in default mode and prints the ratio. Default mode
is compared run to run too, for information (the CUDA kernels scatter with float atomics, so it need not
be reproducible). Only the public API is used: deterministic mode must be selected by the ops themselves.

cuBLAS is deterministic only with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or ``:16:8``) set before CUDA
starts, hence this script runs in a process of its own (benchmarks/gpu_check.py sets the variable).

Prints a markdown table; exits 1 when any deterministic-mode gradient differs between the two runs or a
run fails (for instance an op without a deterministic implementation), 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from dcn.ops import deform_conv2d, deform_roi_pool
from dcn.ops._dispatch import resolve_backend

Inputs = Dict[str, torch.Tensor]


def conv_case(device: torch.device, tiny: bool) -> Tuple[Inputs, Callable[[Inputs, str], torch.Tensor]]:
    n, c, h = (2, 4, 6) if tiny else (8, 64, 28)
    g = torch.Generator().manual_seed(0)
    inputs = {
        "input": torch.randn(n, c, h, h, generator=g),
        "offset": 2 * torch.randn(n, 18, h, h, generator=g),  # samples spread over many pixels: collisions
        "mask": torch.rand(n, 9, h, h, generator=g),
        "weight": torch.randn(c, c, 3, 3, generator=g) / (3 * c**0.5),
        "bias": torch.randn(c, generator=g),
    }

    def run(t: Inputs, backend: str) -> torch.Tensor:
        return deform_conv2d(
            t["input"], t["offset"], t["weight"], t["bias"], 1, 1, mask=t["mask"], backend=backend
        )

    return {k: v.to(device) for k, v in inputs.items()}, run


def roi_case(device: torch.device, tiny: bool) -> Tuple[Inputs, Callable[[Inputs, str], torch.Tensor]]:
    n, c, h, k = (2, 4, 12, 6) if tiny else (2, 64, 50, 256)
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(k, 2, generator=g) * h * 12
    wh = torch.rand(k, 2, generator=g) * h * 8 + 16
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), xy, xy + wh], 1)
    inputs = {
        "input": torch.randn(n, c, h, h, generator=g),
        "offset": 0.1 * torch.randn(k, 2, 7, 7, generator=g),
    }

    def run(t: Inputs, backend: str) -> torch.Tensor:
        # Overlapping RoIs on one map: many bins add into the same input-gradient pixels.
        return deform_roi_pool(
            t["input"], rois.to(t["input"].device), t["offset"], 7, 1 / 16, 2, backend=backend
        )

    return {k: v.to(device) for k, v in inputs.items()}, run


CASES = {"deform_conv2d": conv_case, "deform_roi_pool": roi_case}


def gradients(
    run: Callable, inputs: Inputs, backend: str, grad_out: Optional[torch.Tensor]
) -> List[torch.Tensor]:
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    out = run(leaves, backend)
    g = grad_out if grad_out is not None else torch.ones_like(out)
    return list(torch.autograd.grad(out, list(leaves.values()), g))


def bitwise_equal(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    # Compared as raw bits: equal NaNs count as equal, +0 and -0 as different.
    return all(x.dtype == y.dtype and torch.equal(_bits(x), _bits(y)) for x, y in zip(a, b))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def backward_seconds(run: Callable, inputs: Inputs, backend: str, device: torch.device, reps: int) -> float:
    """Median time of the backward alone (the forward is rerun, untimed, before each)."""
    times = []
    for i in range(reps + 1):  # the first is a warm-up
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
        out = run(leaves, backend)
        grad_out = torch.ones_like(out)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.autograd.grad(out, list(leaves.values()), grad_out)
            end.record()
            torch.cuda.synchronize(device)
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            torch.autograd.grad(out, list(leaves.values()), grad_out)
            seconds = time.perf_counter() - t0
        if i:
            times.append(seconds)
    return statistics.median(times)


def check(op: str, backend: str, device: torch.device, reps: int, tiny: bool) -> Tuple[str, bool]:
    """One table row and whether deterministic mode reproduced every gradient bit for bit."""
    inputs, run = CASES[op](device, tiny)
    g = torch.Generator().manual_seed(2)
    grad_out = torch.randn(run(inputs, backend).shape, generator=g).to(device)
    torch.use_deterministic_algorithms(True)
    try:
        det_equal = bitwise_equal(*(gradients(run, inputs, backend, grad_out) for _ in range(2)))
        t_det = backward_seconds(run, inputs, backend, device, reps)
    finally:
        torch.use_deterministic_algorithms(False)
    default_equal = bitwise_equal(*(gradients(run, inputs, backend, grad_out) for _ in range(2)))
    t_default = backward_seconds(run, inputs, backend, device, reps)
    verdict = "**yes**" if det_equal else "**NO**"
    row = (
        f"| {op} | `{backend}` | {verdict} | {'yes' if default_equal else 'no'} | "
        f"{t_det * 1e3:.2f} ms | {t_default * 1e3:.2f} ms | {t_det / t_default:.2f}x |"
    )
    return row, det_equal


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--reps", type=int, default=10, help="timed backward passes per mode (median)")
    p.add_argument("--tiny", action="store_true", help="tiny inputs (the dry run)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device here (use --device cpu)")
        if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
            sys.exit(
                "CUBLAS_WORKSPACE_CONFIG must be :4096:8 (or :16:8) before CUDA starts for deterministic "
                f"cuBLAS; it is {os.environ.get('CUBLAS_WORKSPACE_CONFIG')!r}"
            )

    print(
        f"_Two forward+backward runs on the same inputs, {device.type}, float32; backward times are medians "
        f"of {args.reps}._\n"
    )
    print(
        "| op | backend | deterministic mode: bitwise equal | default mode: bitwise equal | "
        "backward, deterministic | backward, default | deterministic / default |"
    )
    print("|---|---|---|---|---:|---:|---:|", flush=True)
    ok = True
    for op in CASES:
        # What "auto" picks (CuPy kernels where available), and the PyTorch path if that is another.
        for backend in dict.fromkeys([resolve_backend("auto", device, op), "torch"]):
            try:
                row, equal = check(op, backend, device, args.reps, args.tiny)
            except Exception as error:
                row, equal = (
                    f"| {op} | `{backend}` | **FAILED**: {type(error).__name__}: {error} | | | | |",
                    False,
                )
                traceback.print_exc()
            ok &= equal
            print(row, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
