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

Dtypes: ``--cpu-dtypes`` (default float32) and ``--gpu-dtypes`` (default float32 float16). A 16-bit table
runs every column under ``torch.autocast`` with the features in that dtype and boxes and offsets in
float32, as mixed-precision training does: torchvision's autocast wrapper runs roi_align in float32,
dcn's PyTorch path computes in float32 and its CUDA kernels read the features in the 16-bit dtype.

``--tiny`` shrinks the problem (16 RoIs, C8, 128x128 images): a smoke test of every code path in seconds
(the dry run of benchmarks/gpu_check.py), not a measurement.

Usage: python benchmarks/roi_pool.py [--device cpu|cuda|all] [--reps 5] [--sampling-ratio 2 0] [--threads N]
                                     [--cpu-dtypes float32] [--gpu-dtypes float32 float16] [--tiny] [--strict]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torchvision
from quiet_machine import BusyMachine, LoadGuard, add_guard_arguments
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align

import dcn
from dcn.ops import deform_roi_pool
from dcn.ops._backend import compute_dtype  # boxes and offsets: float32 for 16-bit features
from dcn.ops._dispatch import cupy_unavailable_reason


@dataclass(frozen=True)
class Problem:
    image: int = 800  # image side (pixels)
    n_images: int = 2
    n_rois: int = 512
    channels: int = 256
    out: int = 7  # output bins per side


FULL = Problem()
TINY = Problem(image=128, n_rois=16, channels=8)


def _boxes(pb: Problem, seed: int) -> List[Tensor]:
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for _ in range(pb.n_images):
        k = pb.n_rois // pb.n_images
        xy = torch.rand(k, 2, generator=g) * pb.image * 0.8
        wh = torch.rand(k, 2, generator=g) ** 2 * pb.image * 0.6 + 16  # many small, some large
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=pb.image)], 1))
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


def _fwd_bwd(
    pool: Callable[[Tensor, Optional[Tensor]], Tensor], x: Tensor, offset: Optional[Tensor], autocast: bool
):
    """Callables for forward only and forward+backward of pool(x, offset), under autocast to x's dtype
    when ``autocast``."""

    def run(x, offset):
        with torch.autocast(x.device.type, dtype=x.dtype) if autocast else nullcontext():
            return pool(x, offset)

    def fwd():
        with torch.no_grad():
            return run(x, offset)

    def fwd_bwd():
        xr = x.detach().requires_grad_()
        inputs = [xr]
        off = None
        if offset is not None:
            off = offset.detach().requires_grad_()
            inputs.append(off)
        out = run(xr, off)
        return torch.autograd.grad(out, inputs, torch.ones_like(out))

    return fwd, fwd_bwd


def _single_level(
    pb: Problem, device, dtype, sampling_ratio, backends
) -> List[Tuple[str, Callable, Callable]]:
    g = torch.Generator().manual_seed(0)
    autocast, gdtype = dtype != compute_dtype(dtype), compute_dtype(dtype)
    x = torch.randn(pb.n_images, pb.channels, pb.image // 16, pb.image // 16, generator=g).to(device, dtype)
    boxes = [b.to(device, gdtype) for b in _boxes(pb, 1)]
    offset = (torch.randn(pb.n_rois, 2, pb.out, pb.out, generator=g) * 0.1).to(device, gdtype)

    def align(x, o):
        return roi_align(x, boxes, pb.out, 1 / 16, sampling_ratio, True)

    rows = [("roi_align", *_fwd_bwd(align, x, None, autocast))]
    for be in backends:
        for name, off in (("no offset", None), ("offsets", offset)):

            def pool(x, o, be=be):
                return deform_roi_pool(x, boxes, o, pb.out, 1 / 16, sampling_ratio, backend=be)

            rows.append((f"dcn {be}, {name}", *_fwd_bwd(pool, x, off, autocast)))
    return rows


def _pyramid(pb: Problem, device, dtype, sampling_ratio, backends) -> List[Tuple[str, Callable, Callable]]:
    g = torch.Generator().manual_seed(0)
    autocast, gdtype = dtype != compute_dtype(dtype), compute_dtype(dtype)
    names = ["p2", "p3", "p4", "p5"]
    feats = {
        n: torch.randn(pb.n_images, pb.channels, pb.image >> (2 + i), pb.image >> (2 + i), generator=g).to(
            device, dtype
        )
        for i, n in enumerate(names)
    }
    boxes = [b.to(device, gdtype) for b in _boxes(pb, 2)]
    shapes = [(pb.image, pb.image)] * pb.n_images
    tv = MultiScaleRoIAlign(names, pb.out, sampling_ratio)
    with torch.autocast(device.type, dtype=dtype) if autocast else nullcontext():
        tv(feats, boxes, shapes)  # infer scales and the level mapper once
    levels = tv.map_levels(boxes)
    rois = torchvision.ops._utils.convert_boxes_to_roi_format(boxes)
    index = [torch.where(levels == lvl)[0] for lvl in range(len(names))]
    offset = (torch.randn(pb.n_rois, 2, pb.out, pb.out, generator=g) * 0.1).to(device, gdtype)
    # The pyramid is passed stacked in one argument so _fwd_bwd can differentiate it.
    flat = torch.cat([f.flatten() for f in feats.values()])
    sizes = [f.numel() for f in feats.values()]
    shapes_l = [f.shape for f in feats.values()]

    def unflat(t: Tensor) -> List[Tensor]:
        return [p.view(s) for p, s in zip(t.split(sizes), shapes_l)]

    def pooled(per_level: Callable[[Tensor, Tensor, Optional[Tensor], float], Tensor]):
        def run(t: Tensor, off: Optional[Tensor]) -> Tensor:
            out = t.new_zeros((pb.n_rois, pb.channels, pb.out, pb.out))
            for f, scale, idx in zip(unflat(t), tv.scales, index):
                pooled_level = per_level(f, rois[idx], off[idx] if off is not None else None, scale)
                out[idx] = pooled_level.to(out.dtype)  # under autocast, as torchvision's MultiScaleRoIAlign
            return out

        return run

    align = pooled(lambda f, r, o, s: roi_align(f, r, pb.out, s, sampling_ratio, False))
    rows = [("roi_align", *_fwd_bwd(align, flat, None, autocast))]
    for be in backends:
        for name, off in (("no offset", None), ("offsets", offset)):
            pool = pooled(
                lambda f, r, o, s, be=be: deform_roi_pool(
                    f, r, o, pb.out, s, sampling_ratio, aligned=False, backend=be
                )
            )
            rows.append((f"dcn {be}, {name}", *_fwd_bwd(pool, flat, off, autocast)))
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
    dtypes = ["float32", "float16", "bfloat16"]
    p.add_argument("--cpu-dtypes", nargs="+", default=["float32"], choices=dtypes)
    p.add_argument("--gpu-dtypes", nargs="+", default=["float32", "float16"], choices=dtypes)
    p.add_argument("--tiny", action="store_true", help="a tiny problem (a smoke test, not a measurement)")
    add_guard_arguments(p)
    args = p.parse_args(argv)
    pb = TINY if args.tiny else FULL
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
        f"## Deformable RoI pooling ({pb.n_rois} RoIs, {pb.n_images} images {pb.image}x{pb.image}, "
        f"C{pb.channels}, {pb.out}x{pb.out} bins)"
    )
    print()
    print(
        f"dcn {dcn.__version__ if hasattr(dcn, '__version__') else ''} · torch {torch.__version__} · "
        f"torchvision {torchvision.__version__} · {platform.processor() or platform.machine()} · "
        f"{torch.get_num_threads()} threads · median of {args.reps}"
    )
    for device in devices:
        names = args.cpu_dtypes if device.type == "cpu" else args.gpu_dtypes
        dtypes = [getattr(torch, name) for name in names]
        backends = ["torch"] + (["cupy"] if device.type == "cuda" and cupy_reason is None else [])
        if device.type == "cuda":
            print(
                f"\nGPU: {torch.cuda.get_device_name()}"
                + ("" if cupy_reason is None else f" (cupy: {cupy_reason})")
            )
        for dtype in dtypes:
            for sr in args.sampling_ratio:
                single = f"single level, C{pb.channels} {pb.image // 16}x{pb.image // 16}"
                for title, build in ((single, _single_level), ("FPN P2-P5", _pyramid)):
                    rows = build(pb, device, dtype, sr, backends)
                    precision = str(dtype).removeprefix("torch.")
                    precision += " autocast" if dtype != compute_dtype(dtype) else ""
                    name = f"{device.type} {precision}, {title}, sampling_ratio={sr}"
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
