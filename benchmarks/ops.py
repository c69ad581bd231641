"""Deformable-convolution benchmark: dcn's backends vs torchvision's op vs a dense convolution.

Prints one markdown table per device and dtype (CPU: float32 and bfloat16; GPU: float32, float16,
bfloat16), each headed by the machine, its load, and a NOT QUIET mark when other jobs shared the
CPUs while it ran (benchmarks/quiet_machine.py). Every ratio is computed from numbers measured in
this same run:

    fwd / fwd+bwd   median wall time (CPU: perf_counter; GPU: CUDA events) over --reps runs
    peak            extra memory during one forward+backward (CPU: peak RSS growth via
                    /proc/self/clear_refs; GPU: torch.cuda.max_memory_allocated growth)
    vs tv           torchvision time / ours  (>1 means we are faster)
    vs dense        ours / dense conv time   (how far from a plain convolution of that shape)

Usage: python benchmarks/ops.py [--device cpu|cuda|all] [--reps 5] [--cpu-dtypes float32 bfloat16]
                                [--gpu-dtypes float32 float16 bfloat16] [--tiny] [--strict]

``--tiny`` replaces the shapes by one tiny layer and skips the CPU memory probe: a smoke test of every
code path in seconds (the dry run of benchmarks/gpu_check.py), not a measurement.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import torchvision
import torchvision.ops
from quiet_machine import BusyMachine, LoadGuard, add_guard_arguments

import dcn
from dcn.ops import _cpu_kernel, deform_conv2d
from dcn.ops._dispatch import cupy_unavailable_reason

# (name, N, C, H): 3x3, padding 1, C_out = C_in, offsets ~ N(0, 2) px.
CPU_SHAPES = [
    ("N8 C64 56x56", 8, 64, 56),
    ("N8 C256 14x14", 8, 256, 14),
    ("N2 C512 28x28", 2, 512, 28),
    ("N64 C128 28x28 (classifier layer)", 64, 128, 28),
]
GPU_SHAPES = CPU_SHAPES + [
    ("N32 C512 7x7 (R50 conv5 @224)", 32, 512, 7),
    ("N8 C512 33x33 (R50 conv5 OS16)", 8, 512, 33),
]
TINY_SHAPES = [("N2 C8 12x12 (tiny)", 2, 8, 12)]


@dataclass
class Result:
    fwd: float  # seconds
    fwd_bwd: float
    peak: Optional[float]  # bytes


def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _cpu_peak(fn: Callable[[], None]) -> Optional[float]:
    """Peak resident-memory growth while running fn once (Linux only)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _rss("VmRSS")
        fn()
        return float(_rss("VmHWM") - base)
    except OSError:
        return None


def _time(fn: Callable[[], None], reps: int, device: torch.device) -> float:
    fn()  # warm-up (kernel compilation, allocator)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


_CPU_IMPLS = {
    "dense": lambda x, w: F.conv2d(x, w, None, 1, 1),
    "torchvision": lambda x, o, w: torchvision.ops.deform_conv2d(x, o, w, None, 1, 1),
    "torch": lambda x, o, w: deform_conv2d(x, o, w, None, 1, 1, backend="torch"),
}


def measure(
    op: Callable, inputs: list[torch.Tensor], reps: int, device: torch.device, probe: Optional[tuple] = None
) -> Result:
    """Time ``op`` (forward, forward+backward); ``probe`` = (impl, N, C, H) for the CPU memory probe."""

    def fwd():
        with torch.no_grad():
            op(*inputs)

    def fwd_bwd():
        out = op(*inputs)
        out.backward(torch.ones_like(out))
        for t in inputs:
            t.grad = None

    t_fwd = _time(fwd, reps, device)
    t_fb = _time(fwd_bwd, reps, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd()
        torch.cuda.synchronize()
        peak = float(torch.cuda.max_memory_allocated() - base)
    else:
        peak = _cpu_peak_in_subprocess(*probe) if probe else None
    return Result(t_fwd, t_fb, peak)


def make_inputs(n: int, c: int, h: int, device, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, h, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(c, c, 3, 3, generator=g) / (3 * c**0.5)).to(device, dtype).requires_grad_()
    off = (2 * torch.randn(n, 18, h, h, generator=g)).to(device, dtype).requires_grad_()
    return x, off, w


def _fmt_t(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} µs"


def _fmt_mb(b: Optional[float]) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f} MiB"


def _speedup(reference: float, ours: float) -> str:
    """'**2.0× faster**' or '1.3× slower' (never a 'faster' below 1×)."""
    if ours <= reference:
        return f"**{reference / ours:.1f}× faster**"
    return f"{ours / reference:.1f}× slower"


def run_table(
    device: torch.device, dtype: torch.dtype, shapes, reps: int, with_tv: bool, memory_probe: bool = True
) -> str:
    # The memory probe runs float32 in a fresh process.
    probe = memory_probe and device.type == "cpu" and dtype == torch.float32
    backends = ["torch"]
    if device.type == "cuda":
        backends = ["cupy", "torch"] if cupy_unavailable_reason() is None else ["torch"]
    rows = []
    header = (
        "| shape | impl | fwd | fwd+bwd | peak mem | fwd+bwd vs torchvision | fwd+bwd vs dense |\n"
        "|---|---|---|---|---|---|---|"
    )
    for name, n, c, h in shapes:
        x, off, w = make_inputs(n, c, h, device, dtype)
        dense = measure(
            lambda x, w: F.conv2d(x, w, None, 1, 1),
            [x, w],
            reps,
            device,
            ("dense", n, c, h) if probe else None,
        )
        tv = None
        if with_tv:
            tv = measure(
                lambda x, o, w: torchvision.ops.deform_conv2d(x, o, w, None, 1, 1),
                [x, off, w],
                reps if device.type == "cuda" else max(1, reps // 2),
                device,
                ("torchvision", n, c, h) if probe else None,
            )
        for be in backends:
            ours = measure(
                lambda x, o, w, be=be: deform_conv2d(x, o, w, None, 1, 1, backend=be),
                [x, off, w],
                reps,
                device,
                (be, n, c, h) if probe and be == "torch" else None,
            )
            vs_tv = _speedup(tv.fwd_bwd, ours.fwd_bwd) if tv else "—"
            rows.append(
                f"| {name} | dcn `{be}` | {_fmt_t(ours.fwd)} | {_fmt_t(ours.fwd_bwd)} | "
                f"{_fmt_mb(ours.peak)} | {vs_tv} | {ours.fwd_bwd / dense.fwd_bwd:.2f}× |"
            )
        if tv:
            rows.append(
                f"| {name} | torchvision | {_fmt_t(tv.fwd)} | {_fmt_t(tv.fwd_bwd)} | "
                f"{_fmt_mb(tv.peak)} | 1.0× | {tv.fwd_bwd / dense.fwd_bwd:.2f}× |"
            )
        rows.append(
            f"| {name} | dense conv2d | {_fmt_t(dense.fwd)} | {_fmt_t(dense.fwd_bwd)} | "
            f"{_fmt_mb(dense.peak)} | — | 1.00× |"
        )
    return header + "\n" + "\n".join(rows)


def environment(device: torch.device) -> str:
    what = (
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, dcn {dcn.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    if device.type == "cuda":
        what += f", GPU: {torch.cuda.get_device_name(device)}"
        reason = cupy_unavailable_reason()
        what += "" if reason is None else f" (no `cupy` rows: {reason})"
    return what


def _cpu_peak_in_subprocess(impl: str, n: int, c: int, h: int) -> Optional[float]:
    """Peak RSS growth of one forward+backward, measured in a fresh process.

    A fresh process with fixed glibc malloc thresholds returns freed memory to the OS at once,
    so the peak is the op's own; timing runs stay in this process with the normal allocator
    (fixed thresholds make every large allocation a fresh mmap and would distort the times).
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20), MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-probe", impl, str(n), str(c), str(h)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _memory_probe(impl: str, n: int, c: int, h: int) -> None:
    x, off, w = make_inputs(n, c, h, torch.device("cpu"), torch.float32)
    op = _CPU_IMPLS[impl]
    inputs = [x, w] if impl == "dense" else [x, off, w]

    def fwd_bwd():
        out = op(*inputs)
        out.backward(torch.ones_like(out))
        for t in inputs:
            t.grad = None

    fwd_bwd()  # warm-up: one-time allocations (kernel loading, thread pools) are not the op's
    if impl == "torch" and _cpu_kernel.load() is not None:
        # dcn's CPU kernel keeps its scratch buffer between calls: count it in the peak.
        torch.ops.dcn_cpu.release_workspace()
    print(_cpu_peak(fwd_bwd))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-torchvision", action="store_true", help="skip torchvision's (slow on CPU) op")
    p.add_argument(
        "--cpu-dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    p.add_argument(
        "--gpu-dtypes",
        nargs="+",
        default=["float32", "float16", "bfloat16"],
        choices=["float32", "float16", "bfloat16"],
    )
    p.add_argument("--tiny", action="store_true", help="one tiny layer, no memory probe (a smoke test)")
    add_guard_arguments(p)
    p.add_argument("--memory-probe", nargs=4, metavar=("IMPL", "N", "C", "H"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_probe:
        impl, *dims = args.memory_probe
        return _memory_probe(impl, *map(int, dims))

    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        sys.exit("no CUDA device available: run with --device cpu")

    for device in devices:
        names = args.gpu_dtypes if device.type == "cuda" else args.cpu_dtypes
        dtypes = [getattr(torch, name) for name in names]
        shapes = TINY_SHAPES if args.tiny else CPU_SHAPES if device.type == "cpu" else GPU_SHAPES
        for dtype in dtypes:
            # torchvision's op has no bfloat16 kernels: that table compares with dense only.
            with_tv = not args.no_torchvision and dtype != torch.bfloat16
            title = f"deform_conv2d, {device.type}, {str(dtype).replace('torch.', '')}"
            print(f"\n### {title}\n")
            print(f"_{environment(device)}; 3x3, pad 1, C_out = C_in, median of {args.reps}_\n")
            if device.type == "cuda":
                print(run_table(device, dtype, shapes, args.reps, with_tv), flush=True)
                continue
            try:
                with LoadGuard(title, max_load=args.max_load, wait_s=args.wait, strict=args.strict) as guard:
                    table = run_table(device, dtype, shapes, args.reps, with_tv, memory_probe=not args.tiny)
            except BusyMachine as exc:
                sys.exit(str(exc))
            print(guard.header() + "\n")
            print(table, flush=True)


if __name__ == "__main__":
    main()
