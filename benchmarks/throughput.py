"""Training throughput: images/s of a full training step, deformable vs plain backbone.

    python benchmarks/throughput.py [--device cpu|cuda] [--image-size 64] [--batch-size 32] [--steps 5]

For each backbone (seed_net, resnet18) the same network is built twice, ``deform.enabled`` false
and true (the configs' default deformable stages), with the classification task's head; one step is
forward + cross-entropy + backward + SGD update on random data in train mode. Prints a markdown
table: images/s (from the median step time) and the deform/plain step-time ratio, both measured in
the same run on the same machine, so the ratio is what to compare across machines.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, List, Tuple

import torch
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


def step_times(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, steps: int) -> List[float]:
    """Seconds per training step, ``steps`` timed steps after two warm-up steps (on CUDA the
    clock stops after a device synchronisation, so the time is the GPU's, not the launch queue's)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range(steps + 2):
        _sync(images.device)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(images.device)
        if i >= 2:  # the first steps pay one-off costs (allocations, kernel compilation and selection)
            times.append(time.perf_counter() - start)
    return times


def measure(name: str, size: int, batch: int, steps: int, device: torch.device) -> Tuple[float, float]:
    """Median step seconds of the plain and the deformable variant of backbone ``name``."""
    torch.manual_seed(0)
    images = torch.randn(batch, IN_CHANNELS[name], size, size, device=device)
    targets = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    medians = []
    for deform in (False, True):
        torch.manual_seed(0)
        model = _Classifier(BACKBONES[name](deform, IN_CHANNELS[name])).to(device)
        medians.append(statistics.median(step_times(model, images, targets, steps)))
    return medians[0], medians[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")

    print(
        f"{device.type.upper()} training throughput: {machine}, "
        f"torch {torch.__version__}, batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size} inputs, median of {args.steps} steps\n"
    )
    print("| backbone | plain (img/s) | deform (img/s) | deform/plain step time |")
    print("|---|---:|---:|---:|")
    for name in args.backbones:
        plain, deform = measure(name, args.image_size, args.batch_size, args.steps, device)
        print(
            f"| {name} | {args.batch_size / plain:.1f} | {args.batch_size / deform:.1f} | "
            f"{deform / plain:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
