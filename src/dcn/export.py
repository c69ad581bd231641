r"""Export a trained model for deployment and check it: ``python -m dcn.export <run dir | checkpoint>``.

The network is rebuilt from the run's config and loaded from the checkpoint, weights only
(:mod:`dcn.trained_task`); a run directory means its best checkpoint (``results.json``), else its
``checkpoints/last.ckpt``. Then:

1. export: ``--format onnx`` (default) writes one ``.onnx`` file through torch's default exporter, with
   the deformable convolutions as ONNX ``DeformConv`` (opset >= 19, :mod:`dcn.ops.onnx`);
   ``--format exported-program`` writes a ``torch.export`` program (``.pt2``; load it with
   ``torch.export.load`` after ``import dcn.ops``, which registers the ops it calls);
2. check: the first ``--batch-size`` images of the run's first validation batch go through the export
   (ONNX Runtime on the CPU, or the loaded program) and through the PyTorch model; the largest absolute
   difference is printed, and the command exits with status 1 when it is above ``--tolerance``. With
   ``--dynamic-batch`` the batch dimension is left free and a single image is checked as well;
3. ``export.json`` next to the file: format, opset, input and output names and shapes, the parity
   figures, file sizes and versions.

Classification and segmentation runs export (``images (N, C, H, W) -> logits``: ``(N, classes)`` or
``(N, classes, H, W)``, at the validation images' size). Detection runs do not yet: torchvision's
Faster R-CNN does not go through ``torch.export`` (its NMS has data-dependent shapes), with or without
dcn's ops; tracking runs neither (the tracker is a loop around the network).

Examples::

    python -m dcn.export logs/default/runs/<run>                        # -> <run>/export/model.onnx
    python -m dcn.export logs/deeplab_synthetic/runs/<run>/checkpoints/last.ckpt --dynamic-batch \
        --out deeplab.onnx
    python -m dcn.export <run> --format exported-program
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from dcn.console import run_parser
from dcn.extras import require
from dcn.trained_task import checkpoint_of, load_datamodule

__all__ = ["FORMATS", "checkpoint_of", "export_model", "main", "validation_images"]

FORMATS = ("onnx", "exported-program")
_SUFFIX = {"onnx": ".onnx", "exported-program": ".pt2"}
_ORT_DTYPES = {
    "float": "float32",
    "double": "float64",
    "float16": "float16",
}  # ONNX Runtime's names -> torch's


def _inference_network(task: nn.Module) -> Tuple[nn.Module, str]:
    """The module to export, ``images -> logits``, and its output's name; a clear error for other tasks."""
    from dcn.tasks.classification import ClassificationTask
    from dcn.tasks.detection import DetectionTask
    from dcn.tasks.segmentation import SegmentationTask

    if isinstance(task, SegmentationTask):
        return task.net, "logits"
    if isinstance(task, ClassificationTask):
        return task, "logits"
    if isinstance(task, DetectionTask):
        raise NotImplementedError(
            "exporting a detection run is not supported yet: torchvision's Faster R-CNN does not pass "
            "torch.export (its NMS and proposal selection have data-dependent shapes), with or without dcn's "
            "ops. dcn's deformable convolutions and deformable RoI pooling do export on their own "
            "(dcn.ops.onnx.export_onnx); see docs/deploy.md."
        )
    raise NotImplementedError(
        f"exporting a {type(task).__name__} run is not supported: classification and segmentation runs are"
    )


def validation_images(cfg, count: int, source: str = "the run config") -> Tensor:
    """The first ``count`` images of the run's first validation batch (its datamodule rebuilt from ``cfg``),
    as Tensor[count, C, H, W] float32."""
    datamodule = load_datamodule(cfg, source, num_workers=0)  # one batch: workers would only cost start-up
    datamodule.setup("validate")
    images = next(iter(datamodule.val_dataloader()))
    images = images[0] if isinstance(images, (list, tuple)) else images
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            f"the validation batch's images are not a Tensor[N, C, H, W]: {type(images).__name__}"
        )
    return images[:count].float().contiguous()


def _random_images(task: nn.Module, cfg, count: int, size: Sequence[int]) -> Tensor:
    backbone = getattr(task, "backbone", None)
    channels = int(getattr(backbone, "in_channels", None) or cfg.backbone.get("in_channels", 3) or 3)
    return torch.rand(count, channels, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(0))


def export_model(
    network: nn.Module,
    images: Tensor,
    out: Path,
    fmt: str,
    opset: int,
    dynamic_batch: bool,
    output_name: str = "logits",
) -> None:
    """Write ``network`` (``images -> one tensor``) to ``out`` in format ``fmt``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        from dcn.ops.onnx import export_onnx

        export_onnx(
            network,
            (images,),
            out,
            opset_version=opset,
            dynamic_batch=dynamic_batch,
            input_names=["images"],
            output_names=[output_name],
        )
    else:
        dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
        program = torch.export.export(network, (images,), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, out)


class _Runner:
    """Runs the exported file: ``__call__(images) -> numpy array``; ``describe()`` its inputs and outputs."""

    def __init__(self, out: Path, fmt: str) -> None:
        self.fmt = fmt
        if fmt == "onnx":
            import onnxruntime

            self.session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            self.runtime = f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
        else:
            import dcn.ops  # noqa: F401  (the program calls dcn's registered ops)

            self.program = torch.export.load(str(out))
            self.module = self.program.module()
            self.runtime = f"torch.export.load (torch {torch.__version__})"

    def __call__(self, images: Tensor):
        if self.fmt == "onnx":
            name = self.session.get_inputs()[0].name
            return self.session.run(None, {name: images.numpy()})[0]
        with torch.no_grad():
            return self.module(images).numpy()

    def describe(
        self, images: Tensor, output: Tensor, dynamic_batch: bool, output_name: str
    ) -> Dict[str, List]:
        if self.fmt == "onnx":

            def entry(arg):
                shape = [d if isinstance(d, int) else str(d) for d in arg.shape]
                dtype = arg.type.replace("tensor(", "").rstrip(")")
                return {"name": arg.name, "shape": shape, "dtype": _ORT_DTYPES.get(dtype, dtype)}

            return {
                "inputs": [entry(a) for a in self.session.get_inputs()],
                "outputs": [entry(a) for a in self.session.get_outputs()],
            }

        def entry(name: str, t: Tensor) -> Dict[str, Any]:
            shape = (["batch"] if dynamic_batch else [t.shape[0]]) + list(t.shape[1:])
            return {"name": name, "shape": shape, "dtype": str(t.dtype).replace("torch.", "")}

        return {"inputs": [entry("images", images)], "outputs": [entry(output_name, output)]}


def _versions(fmt: str) -> Dict[str, str]:
    versions = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime
        import onnxscript

        versions.update(
            onnx=onnx.__version__, onnxscript=onnxscript.__version__, onnxruntime=onnxruntime.__version__
        )
    return versions


def _check_export_extra(fmt: str) -> None:
    if fmt == "onnx":
        require("export", "ONNX export (--format onnx)")


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Export and check as the command line asks; returns what export.json holds."""
    import numpy as np

    from dcn.ops.onnx import MIN_OPSET
    from dcn.trained_task import load_trained_task

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.format == "onnx" and args.opset < MIN_OPSET:
        raise ValueError(
            f"--opset must be >= {MIN_OPSET} (ONNX DeformConv appeared in opset {MIN_OPSET}), "
            f"got {args.opset}"
        )
    _check_export_extra(args.format)
    checkpoint = checkpoint_of(args.run)
    task, cfg = load_trained_task(checkpoint, args.config)
    network, output_name = _inference_network(task)
    network = network.float().eval()

    if args.input_size:
        images, source = _random_images(task, cfg, args.batch_size, args.input_size), "random images"
    else:
        try:
            images, source = validation_images(cfg, args.batch_size), "validation images"
        except Exception as error:
            raise RuntimeError(
                f"cannot read a validation batch of the run's data ({type(error).__name__}: {error}); "
                "make the data available, or pass --input-size H W to export and check with random images "
                "of that size"
            ) from error

    default_name = f"model{_SUFFIX[args.format]}"
    run_dir = checkpoint.resolve().parent.parent
    out = Path(args.out) if args.out else run_dir / "export" / default_name
    export_model(network, images, out, args.format, args.opset, args.dynamic_batch, output_name)

    runner = _Runner(out, args.format)
    batches = [images] + ([images[:1]] if args.dynamic_batch and len(images) > 1 else [])
    diff, scale = 0.0, 0.0
    with torch.no_grad():
        reference = [network(batch) for batch in batches]
    for batch, expected in zip(batches, reference):
        got = runner(batch)
        if got.shape != tuple(expected.shape):
            raise RuntimeError(
                f"the export returned shape {got.shape} for input {tuple(batch.shape)}, PyTorch "
                f"{tuple(expected.shape)}"
            )
        diff = max(diff, float(np.abs(got - expected.numpy()).max()))
        scale = max(scale, float(expected.abs().max()))
    passed = bool(diff <= args.tolerance)

    files = [out] + sorted(out.parent.glob(out.name + ".data"))  # external weights, if any were written
    record = {
        "format": args.format,
        "file": str(out),
        "opset": args.opset if args.format == "onnx" else None,
        "dynamic_batch": bool(args.dynamic_batch),
        "task": type(task).__name__,
        "checkpoint": str(checkpoint),
        **runner.describe(images, reference[0], args.dynamic_batch, output_name),
        "parity": {
            "runtime": runner.runtime,
            "input": source,
            "batch_sizes": [len(b) for b in batches],
            "max_abs_diff": diff,
            "max_abs_output": scale,
            "tolerance": args.tolerance,
            "passed": passed,
        },
        "sizes": {"checkpoint": checkpoint.stat().st_size, **{f.name: f.stat().st_size for f in files}},
        "versions": _versions(args.format),
    }
    (out.parent / "export.json").write_text(json.dumps(record, indent=1) + "\n")

    megabytes = sum(f.stat().st_size for f in files) / 2**20
    shape = "x".join(str(d) for d in record["inputs"][0]["shape"])
    print(f"{type(task).__name__} from {checkpoint}")
    print(
        f"  -> {out} ({megabytes:.1f} MiB, {args.format}"
        + (f", opset {args.opset}" if args.format == "onnx" else "")
        + f", input {shape})"
    )
    sizes = " and ".join(str(len(b)) for b in batches)
    verdict = "OK" if passed else "ABOVE TOLERANCE"
    print(
        f"  {runner.runtime} vs PyTorch on {source} (batch {sizes}): max |difference| {diff:.3g} "
        f"(outputs up to {scale:.3g}), tolerance {args.tolerance:g}: {verdict}"
    )
    print(f"  {out.parent / 'export.json'}")
    return record


def parser() -> argparse.ArgumentParser:
    from dcn.ops.onnx import DEFAULT_OPSET, MIN_OPSET

    p = run_parser("python -m dcn.export", __doc__.split("\n\n")[0])
    p.add_argument(
        "--format", choices=FORMATS, default="onnx", help="onnx (default) or exported-program (.pt2)"
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, >= {MIN_OPSET} (default {DEFAULT_OPSET})",
    )
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch dimension free")
    p.add_argument(
        "--out", type=Path, default=None, help="output file (default: <run dir>/export/model.onnx|.pt2)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="validation images checked (and the batch size of "
        "a model exported without --dynamic-batch); default 1",
    )
    p.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest accepted |export - PyTorch| (default 1e-3)"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="the run's config (default: found next to the checkpoint)"
    )
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="check with random images of this size instead of the run's validation data",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    record = run(args)
    return 0 if record["parity"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
