"""Segmentation training throughput on CPU: DeepLabV3+ over resnet18 at output stride 16, deform vs plain.

    python benchmarks/throughput_segmentation.py [--image-size 256] [--batch-size 4] [--steps 3]

The same network is built twice, ``deform.enabled`` false and true (the paper's stages: the 3x3 convs
of layer4, dilated at output stride 16), with the full DeepLabV3+ head (ASPP 256, decoder 256). One
step is forward + pixel cross-entropy + backward + SGD update on random data in train mode. Prints a
markdown row per variant pair: images/s (from the median step time) and the deform/plain step-time
ratio, both measured in the same run, so the ratio is what compares across machines.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import List, Tuple

import torch

from dcn.backbones import ResNetBackbone
from dcn.tasks.segmentation import DeepLab, segmentation_cross_entropy

NUM_CLASSES = 21  # VOC's


def segmentation_step_times(
    model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, steps: int
) -> List[float]:
    """Seconds per training step, ``steps`` timed steps after one warm-up step."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = segmentation_cross_entropy(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:  # the first step pays one-off costs (allocations, kernel selection, the CPU kernel's load)
            times.append(time.perf_counter() - start)
    return times


def measure_segmentation(
    size: int = 256, batch: int = 4, steps: int = 3, arch: str = "resnet18", output_stride: int = 16
) -> Tuple[float, float]:
    """Median training-step seconds of DeepLabV3+ with the plain and the deformable backbone."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size)
    masks = torch.randint(0, NUM_CLASSES, (batch, size, size))
    medians = []
    for deform in (False, True):
        torch.manual_seed(0)
        backbone = ResNetBackbone(arch, output_stride=output_stride, deform={"enabled": deform})
        model = DeepLab(backbone, NUM_CLASSES)
        medians.append(statistics.median(segmentation_step_times(model, images, masks, steps)))
    return medians[0], medians[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (median reported)")
    args = parser.parse_args()

    print(
        f"CPU segmentation training throughput: {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size} inputs, median of {args.steps} steps\n"
    )
    print("| network | plain (img/s) | deform (img/s) | deform/plain step time |")
    print("|---|---:|---:|---:|")
    plain, deform = measure_segmentation(args.image_size, args.batch_size, args.steps)
    print(
        f"| DeepLabV3+ resnet18 OS16 | {args.batch_size / plain:.2f} | {args.batch_size / deform:.2f} | "
        f"{deform / plain:.2f}x |",
        flush=True,
    )


if __name__ == "__main__":
    main()
