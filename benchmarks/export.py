"""Inference latency of exported DCN models: ONNX Runtime (CPU) vs PyTorch eager on the same inputs.

    python benchmarks/export.py [--threads 2] [--batch-size 1] [--repeats 10] [--models classifier deeplab]

Two networks, built as the configs build them and given non-trivial offsets (the zero-initialised offset
predictors get random weights): the DCN ResNet-18 classifier (``backbone=resnet18``: deformable 3x3
convs in layer4, global pooling + linear head, 224x224 inputs) and DeepLabV3+ over a DCN ResNet-18 at
output stride 16 (``experiment=deeplab_synthetic``'s network, 128-channel head, 6 classes, 320x320).
Each is exported with :func:`dcn.ops.onnx.export_onnx` (opset 20, ``DeformConv``), loaded in ONNX
Runtime's CPU provider with the same number of threads PyTorch uses, and both are timed on the same
input: median wall time of ``--repeats`` calls after two warm-up calls. Prints a markdown table with the
ORT/eager latency ratio, measured in the same run (so it is what to compare across machines), the
largest |ORT - PyTorch| on that input, and the load average, since other work on the machine slows
both runtimes, not necessarily alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from dcn.backbones import ResNetBackbone
from dcn.ops import DeformConv2dPack
from dcn.ops.onnx import DEFAULT_OPSET, export_onnx
from dcn.tasks.classification import ClassificationHead
from dcn.tasks.segmentation import DeepLab


class _Classifier(nn.Module):
    """ClassificationTask's network: backbone -> deepest feature -> GAP + Linear."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(next(reversed(self.backbone(images).values())))


def _classifier() -> nn.Module:
    return _Classifier(ResNetBackbone(arch="resnet18", deform={"enabled": True, "stages": [4]}), 1000)


def _deeplab() -> nn.Module:
    backbone = ResNetBackbone(arch="resnet18", output_stride=16, deform={"enabled": True, "stages": [4]})
    return DeepLab(backbone, num_classes=6, aspp_channels=128, decoder_channels=128)


MODELS: Dict[str, Tuple[Callable[[], nn.Module], int]] = {  # name -> (builder, default input size)
    "classifier": (_classifier, 224),
    "deeplab": (_deeplab, 320),
}
LABELS = {"classifier": "DCN ResNet-18 classifier", "deeplab": "DeepLabV3+ (DCN ResNet-18, OS 16)"}


def _shake_offsets(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DeformConv2dPack):
                weight = module.conv_offset.weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.01)


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    times: List[float] = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        call()
        if i >= 2:  # the first calls pay one-off costs (allocation, kernel selection, the CPU kernel's build)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    name: str, size: int, batch: int, repeats: int, threads: int, folder: Path
) -> Tuple[float, float, float]:
    """(eager seconds, ORT seconds, max |ORT - eager|) for model ``name`` on a random batch."""
    import onnxruntime

    torch.manual_seed(0)
    model = MODELS[name][0]().eval()
    _shake_offsets(model)
    images = torch.rand(batch, 3, size, size)
    path = folder / f"{name}.onnx"
    export_onnx(model, (images,), path, opset_version=DEFAULT_OPSET, input_names=["images"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"images": images.numpy()}

    with torch.inference_mode():
        expected = model(images).numpy()
        eager = _median_seconds(lambda: model(images), repeats)
    ort = _median_seconds(lambda: session.run(None, feed), repeats)
    diff = float(np.abs(session.run(None, feed)[0] - expected).max())
    return eager, ort, diff


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per runtime (median reported)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="threads for both runtimes"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="input size for every model (default: 224 / 320)"
    )
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(args.threads)
    load = "n/a" if not hasattr(os, "getloadavg") else ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"CPU inference: {platform.processor() or platform.machine()}, {args.threads} threads, torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__} (CPUExecutionProvider), opset "
        f"{DEFAULT_OPSET}, batch {args.batch_size}, median of {args.repeats} calls; "
        f"load average at start {load}\n"
    )
    print("| model | input | PyTorch eager (ms) | ONNX Runtime (ms) | ORT / eager | max abs diff |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            size = args.size or MODELS[name][1]
            eager, ort, diff = measure(name, size, args.batch_size, args.repeats, args.threads, Path(folder))
            print(
                f"| {LABELS[name]} | {args.batch_size}x3x{size}x{size} | "
                f"{eager * 1e3:.1f} | {ort * 1e3:.1f} | {ort / eager:.2f}x | {diff:.2g} |",
                flush=True,
            )
    if hasattr(os, "getloadavg"):
        print(f"\nload average at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
