"""Where the time of one deform_conv2d forward+backward goes, kernel by kernel (torch.profiler).

    python benchmarks/profile_ops.py [--device cuda|cpu] [--backend auto|torch|cupy] [--reps 20]
    python benchmarks/profile_ops.py --split --shape 32 512 7 --dtype bfloat16   # one layer, summarised

For each shape of benchmarks/ops.py it prints the profiler's table of device time per kernel (CPU:
per operator) over ``--reps`` forward+backward calls, after warm-up. Use it to see which part of
the op (sampling kernels, GEMMs, copies, reductions) to work on; the benchmark tables themselves come
from benchmarks/ops.py.

``--split`` prints instead one summary table for the shape(s): forward and backward profiled separately
(the forwards' outputs are kept and their backwards profiled afterwards), each split into sampling kernels
(dcn's and torchvision's im2col / col2im kernels, the PyTorch path's gathers and scatters), GEMMs (cuBLAS /
CUTLASS kernels; CPU: mm / bmm / addmm) and everything else (copies, casts, reductions), as time per call;
plus the host time per call (wall time until the call returns, without waiting for the GPU: the Python,
dispatch and launch cost). ``--dtype bfloat16`` runs the layer under bfloat16 autocast with float32
parameters, as ``precision=bf16-mixed`` training does.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from contextlib import nullcontext
from typing import Callable, Dict, List

import torch
from torch.profiler import ProfilerActivity, profile

from dcn.ops import deform_conv2d

SHAPES = [("N8 C64 56x56", 8, 64, 56), ("N8 C256 14x14", 8, 256, 14), ("N64 C128 28x28", 64, 128, 28)]

# Kernel / operator names by category (first match wins, checked in this order).
CATEGORIES = (
    (
        "sampling",
        re.compile(r"deform|im2col|col2im|grid_sampl|gather|scatter|index_put|index_add|dcn_cpu", re.I),
    ),
    # cuBLAS(Lt) kernels: GEMMs (nvjet, xmma, cutlass), GEMVs and split-K reductions beside them.
    (
        "GEMM",
        re.compile(r"gemm|gemv|xmma|cutlass|nvjet|splitK|cublas|matmul|aten::(mm|bmm|addmm|baddbmm)\b", re.I),
    ),
)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def split_times(prof, cuda: bool, calls: int) -> Dict[str, float]:
    """Microseconds per call by category. GPU: self device time of the kernels; CPU: self CPU time of the
    operators (self times do not double-count nested operators)."""
    totals = {"sampling": 0.0, "GEMM": 0.0, "other": 0.0}
    for evt in prof.key_averages():
        if cuda:
            if evt.device_type != torch.autograd.DeviceType.CUDA:
                continue  # host-side operators: their kernels are counted as CUDA events
            us = getattr(evt, "self_device_time_total", None)
            us = evt.self_cuda_time_total if us is None else us
        else:
            us = evt.self_cpu_time_total
        totals[category(evt.key)] += us
    return {k: v / calls for k, v in totals.items()}


def layer(n: int, c: int, h: int, device: torch.device, backend: str, dtype: torch.dtype):
    """(forward, inputs): forward() runs one deform_conv2d call (under autocast for a 16-bit dtype)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, h, generator=g).to(device).requires_grad_()
    w = (torch.randn(c, c, 3, 3, generator=g) / (3 * c**0.5)).to(device).requires_grad_()
    off = (2 * torch.randn(n, 18, h, h, generator=g)).to(device).requires_grad_()
    autocast = dtype != torch.float32

    def forward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype) if autocast else nullcontext():
            return deform_conv2d(x, off, w, None, 1, 1, backend=backend)

    return forward


def _host_us(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _backward(out: torch.Tensor) -> None:
    out.backward(torch.ones_like(out))


def split_table(forward: Callable[[], torch.Tensor], device: torch.device, reps: int) -> List[str]:
    """Rows ``| phase | sampling | GEMM | other | all | host |`` for forward and backward."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):  # warm-up: kernel compilation, cuBLAS handles, allocator
        _backward(forward())
    sync()
    with profile(activities=activities) as fwd_prof:
        outs = [forward() for _ in range(reps)]
        sync()
    grads = [torch.ones_like(o) for o in outs]
    with profile(activities=activities) as bwd_prof:  # the backwards of the forwards profiled above
        for o, g in zip(outs, grads):
            o.backward(g)
        sync()
    del outs
    host_fwd = _host_us(forward, reps)
    pending = iter([forward() for _ in range(reps)])
    sync()
    host_bwd = _host_us(lambda: _backward(next(pending)), reps)
    sync()
    rows = []
    for phase, prof, host in (("forward", fwd_prof, host_fwd), ("backward", bwd_prof, host_bwd)):
        t = split_times(prof, cuda, reps)
        rows.append(
            f"| {phase} | {t['sampling']:.0f} µs | {t['GEMM']:.0f} µs | {t['other']:.0f} µs | "
            f"{sum(t.values()):.0f} µs | {host:.0f} µs |"
        )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "cupy"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--shape", nargs=3, type=int, metavar=("N", "C", "H"), help="one N x C x H x H layer")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--split", action="store_true", help="a summary: sampling / GEMM / other, fwd and bwd")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu)")
    dtype = getattr(torch, args.dtype)
    shapes = (
        [(f"N{args.shape[0]} C{args.shape[1]} {args.shape[2]}x{args.shape[2]}", *args.shape)]
        if args.shape
        else SHAPES
    )
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    for name, n, c, h in shapes:
        forward = layer(n, c, h, device, args.backend, dtype)
        precision = args.dtype + (" autocast" if dtype != torch.float32 else "")
        title = f"{name}, 3x3, {precision}, backend={args.backend}"
        if args.split:
            unit = "GPU kernel time" if cuda else "CPU operator self time"
            print(f"\n### {title}, {where}\n")
            print(
                f"_{unit} per call by category, mean of {args.reps} calls; host: median wall time per call._"
            )
            print()
            print("| phase | sampling | GEMM | other | all | host |")
            print("|---|---:|---:|---:|---:|---:|")
            print("\n".join(split_table(forward, device, args.reps)), flush=True)
            continue

        def step():
            _backward(forward())

        for _ in range(3):
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(args.reps):
                step()
            if cuda:
                torch.cuda.synchronize()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(f"\n### {title}, {device.type}, {args.reps} forward+backward calls\n")
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
