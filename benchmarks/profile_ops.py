"""Where the time of one deform_conv2d forward+backward goes, kernel by kernel (torch.profiler).

    python benchmarks/profile_ops.py [--device cuda|cpu] [--backend auto|torch|cupy] [--reps 20]

For each shape of benchmarks/ops.py it prints the profiler's table of device time per kernel (CPU:
per operator) over ``--reps`` forward+backward calls, after warm-up. Use it to see which part of
the op (sampling kernels, GEMMs, copies, reductions) to work on; the benchmark tables themselves come
from benchmarks/ops.py.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from dcn.ops import deform_conv2d

SHAPES = [("N8 C64 56x56", 8, 64, 56), ("N8 C256 14x14", 8, 256, 14), ("N64 C128 28x28", 64, 128, 28)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "cupy"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rows", type=int, default=12)
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for name, n, c, h in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, h, generator=g).to(device).requires_grad_()
        w = (torch.randn(c, c, 3, 3, generator=g) / (3 * c**0.5)).to(device).requires_grad_()
        off = (2 * torch.randn(n, 18, h, h, generator=g)).to(device).requires_grad_()

        def step():
            out = deform_conv2d(x, off, w, None, 1, 1, backend=args.backend)
            out.backward(torch.ones_like(out))

        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(args.reps):
                step()
            if cuda:
                torch.cuda.synchronize()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(f"\n### {name}, backend={args.backend}, {device.type}, {args.reps} forward+backward calls\n")
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
