"""Training throughput: images/s of a full training step, deformable vs plain backbone.

    python benchmarks/throughput.py [--device cpu|cuda] [--image-size 64] [--batch-size 32] [--steps 5]

For each backbone (seed_net, resnet18) the same network is built twice, ``deform.enabled`` false
and true (the configs' default deformable stages), with the classification task's head; one step is
forward + cross-entropy + backward + SGD update on random data in train mode. Prints a markdown
table: images/s (from the median step time) and the deform/plain step-time ratio, both measured in
the same run on the same machine, so the ratio is what to compare across machines. On the CPU the
table is headed by the machine and its load and marked NOT QUIET when other jobs shared the CPUs
while it ran (benchmarks/quiet_machine.py); the plain and deformable steps take turns, so that a
change in load hits both alike.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, List, Tuple

import torch
from quiet_machine import BusyMachine, LoadGuard, add_guard_arguments
from torch import nn

from dcn.backbones import ResNetBackbone, SeedNet
from dcn.tasks.classification import ClassificationHead

NUM_CLASSES = 10
BACKBONES: dict[str, Callable[[bool, int], nn.Module]] = {
    "seed_net": lambda deform, c: SeedNet(in_channels=c, deform={"enabled": deform}),
    "resnet18": lambda deform, c: ResNetBackbone(arch="resnet18", in_channels=c, deform={"enabled": deform}),
}
IN_CHANNELS = {"seed_net": 1, "resnet18": 3}


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(next(reversed(self.backbone(x).values())))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], float]:
    """A callable running one training step and returning its seconds (on CUDA the clock stops
    after a device synchronisation, so the time is the GPU's, not the launch queue's)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        _sync(images.device)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(images.device)
        return time.perf_counter() - start

    return step


def measure(name: str, size: int, batch: int, steps: int, device: torch.device) -> Tuple[float, float]:
    """Median step seconds of the plain and the deformable variant of backbone ``name``, their
    steps taking turns after two warm-up steps each (the first steps pay one-off costs:
    allocations, kernel compilation and selection)."""
    torch.manual_seed(0)
    images = torch.randn(batch, IN_CHANNELS[name], size, size, device=device)
    targets = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    steps_fns = []
    for deform in (False, True):
        torch.manual_seed(0)
        model = _Classifier(BACKBONES[name](deform, IN_CHANNELS[name])).to(device)
        steps_fns.append(training_step(model, images, targets))
    for fn in steps_fns:
        fn(), fn()
    times: List[List[float]] = [[], []]
    for _ in range(steps):
        for i, fn in enumerate(steps_fns):
            times[i].append(fn())
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--steps",
        "--reps",
        dest="steps",
        type=int,
        default=5,
        help="timed steps per variant (median reported)",
    )
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    add_guard_arguments(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )

    print(
        f"{device.type.upper()} training throughput: {machine}, "
        f"torch {torch.__version__}, batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size} inputs, median of {args.steps} steps\n"
    )
    lines = ["| backbone | plain (img/s) | deform (img/s) | deform/plain step time |", "|---|---:|---:|---:|"]
    try:
        with LoadGuard(
            "training throughput",
            max_load=args.max_load,
            wait_s=args.wait,
            strict=args.strict and device.type == "cpu",
        ) as guard:
            for name in args.backbones:
                plain, deform = measure(name, args.image_size, args.batch_size, args.steps, device)
                lines.append(
                    f"| {name} | {args.batch_size / plain:.1f} | {args.batch_size / deform:.1f} | "
                    f"{deform / plain:.2f}x |"
                )
    except BusyMachine as exc:
        raise SystemExit(str(exc))
    if device.type == "cpu":
        print(guard.header() + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
