r"""Detection throughput: Faster R-CNN training steps and inference, the four DCN variants vs the plain model.

    python benchmarks/throughput_detection.py [--arch resnet18] [--image-size 128] [--batch-size 8] \
        [--steps 5]
    python benchmarks/throughput_detection.py --arch resnet50 --image-size 600 --batch-size 2 \
        --fpn-channels 256 --fpn-features layer1 layer2 layer3 layer4   # the frcnn_voc network at VOC's scale

The network is ``dcn.tasks.detection.build_faster_rcnn`` as the experiments build it, four times: deformable
3x3 convs in conv5 off/on x box pooler RoIAlign / deformable RoI pooling. The defaults are
``experiment=frcnn_synthetic``'s network (ResNet-18, a 128-channel FPN on layer2..4, 128-px images, batch 8).
A training step is forward (all four losses) + backward + SGD update on random images with 1-4 random boxes
each, in train mode; inference is the eval-mode forward with post-processing. Every variant sees the same
images, boxes and random state per step. Prints a markdown table: images/s from the median step time, and each
variant's step time divided by the plain model's, measured in the same run (the ratio is what compares across
machines).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Dict, List, Sequence, Tuple

import torch

from dcn.backbones import ResNetBackbone
from dcn.tasks.detection import build_faster_rcnn

NUM_CLASSES = 6  # the synthetic set's five shapes + background
VARIANTS: Tuple[Tuple[bool, str], ...] = (
    (False, "align"),
    (False, "deform"),
    (True, "align"),
    (True, "deform"),
)


def random_batch(
    batch: int, size: int, generator: torch.Generator
) -> Tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]:
    """``batch`` images Tensor[3, size, size] in [0, 1] with 1-4 boxes each (10-60% of the side)."""
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=generator))
        k = int(torch.randint(1, 5, (1,), generator=generator))
        wh = (0.1 + 0.5 * torch.rand(k, 2, generator=generator)) * size
        xy = torch.rand(k, 2, generator=generator) * (size - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, NUM_CLASSES, (k,), generator=generator)})
    return images, targets


def time_variant(model: torch.nn.Module, batches: Sequence, train: bool) -> float:
    """Median seconds per step over ``batches[1:]`` (the first pays one-off costs)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    model.train(train)
    times = []
    for i, (images, targets) in enumerate(batches):
        torch.manual_seed(i)  # RPN / RoI sampling draws the same for every variant
        start = time.perf_counter()
        if train:
            loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode():
                model(images)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(args: argparse.Namespace, deform: bool, roi_pool: str) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = ResNetBackbone(args.arch, deform={"enabled": deform})
    last = int(
        args.fpn_features[0][-1]
    )  # layerN has stride 2^(N+1); anchors 4x the stride, one size per level
    sizes = [[2 ** (i + 3)] for i in range(last, last + len(args.fpn_features) + 1)]
    return build_faster_rcnn(
        backbone,
        NUM_CLASSES,
        "fpn",
        roi_pool,
        fpn_features=args.fpn_features,
        fpn_channels=args.fpn_channels,
        anchor_sizes=sizes,
        min_size=args.image_size,
        max_size=args.image_size,
        representation_size=args.representation_size,
        deform_roi_pool={"hidden_channels": args.representation_size},
        rpn={
            "pre_nms_top_n_train": 600,
            "post_nms_top_n_train": 300,
            "pre_nms_top_n_test": 300,
            "post_nms_top_n_test": 100,
        },
        roi_heads={"batch_size_per_image": 128},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50", "resnet101"]
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps per variant and mode (median reported)"
    )
    parser.add_argument("--fpn-features", nargs="+", default=["layer2", "layer3", "layer4"])
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--representation-size", type=int, default=256)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(args.batch_size, args.image_size, generator) for _ in range(args.steps + 1)]
    print(
        f"CPU detection throughput: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; Faster R-CNN {args.arch} FPN({'/'.join(args.fpn_features)}, "
        f"{args.fpn_channels} ch), batch {args.batch_size}, {args.image_size}x{args.image_size} images, "
        f"median of {args.steps} steps\n"
    )
    print(
        "| deform conv (conv5) | RoI pooling | train (img/s) | train step vs plain | "
        "inference (img/s) | inference vs plain |"
    )
    print("|---|---|---:|---:|---:|---:|")
    plain: Tuple[float, float] = (0.0, 0.0)
    for deform, roi_pool in VARIANTS:
        model = build(args, deform, roi_pool)
        train_s = time_variant(model, batches, train=True)
        infer_s = time_variant(model, batches, train=False)
        if not deform and roi_pool == "align":
            plain = (train_s, infer_s)
        print(
            f"| {'on' if deform else 'off'} | {roi_pool} | {args.batch_size / train_s:.3g} | "
            f"{train_s / plain[0]:.2f}x | {args.batch_size / infer_s:.3g} | {infer_s / plain[1]:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
