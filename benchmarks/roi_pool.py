"""Deformable RoI pooling benchmark: dcn's backends vs torchvision's roi_align (the lower bound).

roi_align does the same sampling with no offsets, so it is the natural floor for our op.
Prints one markdown table per device (and dtype on GPU); every ratio is computed from numbers
measured in this same run:

    fwd / fwd+bwd   median wall time (CPU: perf_counter; GPU: CUDA events) over --reps runs, the
                    columns of a table taking turns in each repetition;
                    fwd+bwd asks for the input gradient (and the offset gradient when offsets are given)
    x roi_align     ours / roi_align for the same column (< 1.5 is the target; < 1 means faster)

Shapes (Faster R-CNN-like, 800x800 images, N=2, 7x7 bins):
    single level    512 RoIs on a C256 50x50 map (stride 16)
    FPN pyramid     512 RoIs over P2-P5 (C256, 200/100/50/25), assigned by torchvision's LevelMapper

CPU tables are headed by the machine and its load, and marked NOT QUIET when other jobs shared
the CPUs while they ran (benchmarks/quiet_machine.py).

Usage: python benchmarks/roi_pool.py [--device cpu|cuda|all] [--reps 5] [--sampling-ratio 2 0] [--threads N]
                                     [--strict]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torchvision
from quiet_machine import BusyMachine, LoadGuard, add_guard_arguments
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align

import dcn
from dcn.ops import deform_roi_pool
from dcn.ops._dispatch import cupy_unavailable_reason

IMAGE = 800
N_IMAGES = 2
N_ROIS = 512
CHANNELS = 256
OUT = 7


def _boxes(seed: int) -> List[Tensor]:
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for _ in range(N_IMAGES):
        k = N_ROIS // N_IMAGES
        xy = torch.rand(k, 2, generator=g) * IMAGE * 0.8
        wh = torch.rand(k, 2, generator=g) ** 2 * IMAGE * 0.6 + 16  # many small, some large
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=IMAGE)], 1))
    return boxes


def _once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _time_round_robin(fns: Sequence[Callable[[], object]], reps: int, device: torch.device) -> List[float]:
    """Median time of each fn; the fns take turns in every repetition, so that a change in
    machine load (shared CI runners) hits every column alike and ratios stay meaningful."""
    for fn in fns:
        fn()  # warm-up (kernel compilation, allocator)
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            times[i].append(_once(fn, device))
    return [statistics.median(t) for t in times]


def _fwd_bwd(pool: Callable[[Tensor, Optional[Tensor]], Tensor], x: Tensor, offset: Optional[Tensor]):
    """Callables for forward only and forward+backward of pool(x, offset)."""

    def fwd():
        with torch.no_grad():
            return pool(x, offset)

    def fwd_bwd():
        xr = x.detach().requires_grad_()
        inputs = [xr]
        off = None
        if offset is not None:
            off = offset.detach().requires_grad_()
            inputs.append(off)
        out = pool(xr, off)
        return torch.autograd.grad(out, inputs, torch.ones_like(out))

    return fwd, fwd_bwd


def _single_level(device, dtype, sampling_ratio, backends) -> List[Tuple[str, Callable, Callable]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_IMAGES, CHANNELS, IMAGE // 16, IMAGE // 16, generator=g).to(device, dtype)
    boxes = [b.to(device, dtype) for b in _boxes(1)]
    offset = (torch.randn(N_ROIS, 2, OUT, OUT, generator=g) * 0.1).to(device, dtype)
    rows = [
        ("roi_align", *_fwd_bwd(lambda x, o: roi_align(x, boxes, OUT, 1 / 16, sampling_ratio, True), x, None))
    ]
    for be in backends:
        for name, off in (("no offset", None), ("offsets", offset)):

            def pool(x, o, be=be):
                return deform_roi_pool(x, boxes, o, OUT, 1 / 16, sampling_ratio, backend=be)

            rows.append((f"dcn {be}, {name}", *_fwd_bwd(pool, x, off)))
    return rows


def _pyramid(device, dtype, sampling_ratio, backends) -> List[Tuple[str, Callable, Callable]]:
    g = torch.Generator().manual_seed(0)
    names = ["p2", "p3", "p4", "p5"]
    feats = {
        n: torch.randn(N_IMAGES, CHANNELS, IMAGE >> (2 + i), IMAGE >> (2 + i), generator=g).to(device, dtype)
        for i, n in enumerate(names)
    }
    boxes = [b.to(device, dtype) for b in _boxes(2)]
    shapes = [(IMAGE, IMAGE)] * N_IMAGES
    tv = MultiScaleRoIAlign(names, OUT, sampling_ratio)
    tv(feats, boxes, shapes)  # infer scales and the level mapper once
    levels = tv.map_levels(boxes)
    rois = torchvision.ops._utils.convert_boxes_to_roi_format(boxes)
    index = [torch.where(levels == lvl)[0] for lvl in range(len(names))]
    offset = (torch.randn(N_ROIS, 2, OUT, OUT, generator=g) * 0.1).to(device, dtype)
    # The pyramid is passed stacked in one argument so _fwd_bwd can differentiate it.
    flat = torch.cat([f.flatten() for f in feats.values()])
    sizes = [f.numel() for f in feats.values()]
    shapes_l = [f.shape for f in feats.values()]

    def unflat(t: Tensor) -> List[Tensor]:
        return [p.view(s) for p, s in zip(t.split(sizes), shapes_l)]

    def pooled(per_level: Callable[[Tensor, Tensor, Optional[Tensor], float], Tensor]):
        def run(t: Tensor, off: Optional[Tensor]) -> Tensor:
            out = t.new_zeros((N_ROIS, CHANNELS, OUT, OUT))
            for f, scale, idx in zip(unflat(t), tv.scales, index):
                out[idx] = per_level(f, rois[idx], off[idx] if off is not None else None, scale)
            return out

        return run

    rows = [
        (
            "roi_align",
            *_fwd_bwd(pooled(lambda f, r, o, s: roi_align(f, r, OUT, s, sampling_ratio, False)), flat, None),
        )
    ]
    for be in backends:
        for name, off in (("no offset", None), ("offsets", offset)):
            pool = pooled(
                lambda f, r, o, s, be=be: deform_roi_pool(
                    f, r, o, OUT, s, sampling_ratio, aligned=False, backend=be
                )
            )
            rows.append((f"dcn {be}, {name}", *_fwd_bwd(pool, flat, off)))
    return rows


def _table(title: str, rows, reps: int, device: torch.device) -> str:
    fwd = _time_round_robin([f for _, f, _ in rows], reps, device)
    fwd_bwd = _time_round_robin([fb for _, _, fb in rows], reps, device)
    lines = [
        f"### {title}",
        "",
        "| op | fwd (ms) | fwd+bwd (ms) | fwd x roi_align | fwd+bwd x roi_align |",
        "|---|---:|---:|---:|---:|",
    ]
    for (name, _, _), f, fb in zip(rows, fwd, fwd_bwd):
        lines.append(
            f"| {name} | {f * 1e3:.1f} | {fb * 1e3:.1f} | {f / fwd[0]:.2f} | {fb / fwd_bwd[0]:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sampling-ratio", type=int, nargs="+", default=[2, 0])
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (torchvision's CPU roi_align uses one whatever this is)",
    )
    add_guard_arguments(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            sys.exit("--device cuda: no CUDA device here")
    cupy_reason = cupy_unavailable_reason("deform_roi_pool")

    print(
        f"## Deformable RoI pooling ({N_ROIS} RoIs, {N_IMAGES} images {IMAGE}x{IMAGE}, "
        f"C{CHANNELS}, {OUT}x{OUT} bins)"
    )
    print()
    print(
        f"dcn {dcn.__version__ if hasattr(dcn, '__version__') else ''} · torch {torch.__version__} · "
        f"torchvision {torchvision.__version__} · {platform.processor() or platform.machine()} · "
        f"{torch.get_num_threads()} threads · median of {args.reps}"
    )
    for device in devices:
        dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.float16]
        backends = ["torch"] + (["cupy"] if device.type == "cuda" and cupy_reason is None else [])
        if device.type == "cuda":
            print(
                f"\nGPU: {torch.cuda.get_device_name()}"
                + ("" if cupy_reason is None else f" (cupy: {cupy_reason})")
            )
        for dtype in dtypes:
            for sr in args.sampling_ratio:
                for title, build in (("single level, C256 50x50", _single_level), ("FPN P2-P5", _pyramid)):
                    if dtype == torch.float16 and "torch" in backends:
                        be = [b for b in backends if b != "torch"]  # the PyTorch path computes in f32
                    else:
                        be = backends
                    rows = build(device, dtype, sr, be)
                    name = f"{device.type} {str(dtype).removeprefix('torch.')}, {title}, sampling_ratio={sr}"
                    print()
                    if device.type == "cuda":
                        print(_table(name, rows, args.reps, device))
                        sys.stdout.flush()
                        continue
                    try:
                        with LoadGuard(
                            name, max_load=args.max_load, wait_s=args.wait, strict=args.strict
                        ) as guard:
                            table = _table(name, rows, args.reps, device)
                    except BusyMachine as exc:
                        sys.exit(str(exc))
                    title_line, body = table.split("\n", 1)
                    print(f"{title_line}\n\n{guard.header()}\n{body}")
                    sys.stdout.flush()


if __name__ == "__main__":
    main()
