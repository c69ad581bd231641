r"""Detect objects in image files with a trained Faster R-CNN:
``python -m dcn.detect <checkpoint> <image or folder>...``.

The network is rebuilt from the run's config (found next to the checkpoint, or ``--config``) and loaded
from the checkpoint (:mod:`dcn.trained_task`); class names come from the checkpoint. Each image goes
through the model at the run's resolution settings (``task.min_size`` / ``task.max_size``); boxes are
reported in the image's own pixels.

Writes to ``--output`` (default ``detections/``):

- ``detections.json``: ``{"checkpoint", "class_names", "score_threshold", "images": [{"file", "width",
  "height", "detections": [{"box": [x1, y1, x2, y2], "label", "class", "score"}, ...]}, ...]}``, the
  boxes scoring at least ``--score-threshold``, best first; ``"skipped": [{"file", "error"}]`` lists the
  files that could not be read (truncated, not an image): they are skipped, every other image keeps its
  result, and the command exits with status 1;
- ``<image name>.png`` per image with those boxes drawn (unless ``--no-pictures``).

Examples::

    python -m dcn.detect logs/frcnn_synthetic/runs/<run>/checkpoints/last.ckpt \
        data/synthetic_det/det-*/VOCdevkit/VOC2007/JPEGImages
    python -m dcn.detect run/checkpoints/epoch_011.ckpt street.jpg dog.jpg --score-threshold 0.7 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor

from dcn.console import run_parser
from dcn.images import ImageReadError, read_image_array

__all__ = ["IMAGE_SUFFIXES", "detect", "list_images", "main", "read_image"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(paths: Sequence[Path]) -> List[Path]:
    """Image files named directly, plus those inside named folders (sorted, not recursive)."""
    files: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image file or folder: {path}")
    return files


def read_image(path: Path) -> Tensor:
    """An image file as the detector's input: Tensor[3, H, W] float in [0, 1] (RGB).

    Raises:
        dcn.images.ImageReadError: a missing, truncated or unreadable file (the message names it).
    """
    return torch.from_numpy(read_image_array(path).copy()).permute(2, 0, 1).float().div_(255)


def detect(task, images: Sequence[Tensor]) -> List[Dict[str, Tensor]]:
    """``task`` (a DetectionTask in eval mode) over ``images`` (Tensor[3, H_i, W_i] in [0, 1]) in one
    forward pass: torchvision's detections (``boxes`` Tensor[D, 4] xyxy pixels, ``labels``, ``scores``)
    on the CPU."""
    device = next(task.parameters()).device
    with torch.inference_mode():
        detections = task([image.to(device) for image in images])
    return [{k: v.cpu() for k, v in d.items()} for d in detections]


def _record(
    path: Path, image: Tensor, prediction: Dict[str, Tensor], names: Sequence[str], threshold: float
) -> dict:
    from dcn.tasks.detection.visualization import class_name

    keep = prediction["scores"] >= threshold
    detections = [
        {
            "box": [round(v, 2) for v in box],
            "label": int(label),
            "class": class_name(names, int(label)),
            "score": round(float(score), 4),
        }
        for box, label, score in zip(
            prediction["boxes"][keep].tolist(),
            prediction["labels"][keep].tolist(),
            prediction["scores"][keep].tolist(),
        )
    ]
    return {
        "file": str(path),
        "width": int(image.shape[2]),
        "height": int(image.shape[1]),
        "detections": detections,
    }


def _one_line(path: Path, detections: List[dict], shown: int = 8) -> str:
    found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in detections[:shown])
    more = f", ... ({len(detections) - shown} more)" if len(detections) > shown else ""
    return f"{path}: {len(detections)} object(s)" + (f": {found}{more}" if found else "")


def run(args: argparse.Namespace) -> dict:
    from dcn.tasks.detection import DetectionTask
    from dcn.tasks.detection.visualization import draw_predictions
    from dcn.trained_task import checkpoint_of, load_trained_task

    if not 0 <= args.score_threshold <= 1:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    files = list_images(args.inputs)  # bad paths fail before the model is built
    checkpoint = checkpoint_of(args.run)
    task, _ = load_trained_task(checkpoint, args.config, task_type=DetectionTask, device=args.device)
    names = task.class_names()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    records, skipped = [], []
    for start in range(0, len(files), args.batch_size):  # read a batch at a time: folders may be large
        chunk, images = [], []
        for path in files[start : start + args.batch_size]:
            try:
                images.append(read_image(path))
                chunk.append(path)
            except ImageReadError as error:  # one bad file must not cost the others their results
                skipped.append({"file": str(path), "error": str(error)})
                print(f"skipped: {error}", file=sys.stderr)
        if not images:
            continue
        for path, image, prediction in zip(chunk, images, detect(task, images)):
            records.append(_record(path, image, prediction, names, args.score_threshold))
            if args.pictures:
                picture = draw_predictions(image, prediction, names, args.score_threshold)
                Image.fromarray(picture).save(output / f"{path.stem}.png")
            print(_one_line(path, records[-1]["detections"]))
    summary = {
        "checkpoint": str(checkpoint),
        "class_names": names,
        "score_threshold": args.score_threshold,
        "images": records,
        "skipped": skipped,
    }
    (output / "detections.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def parser() -> argparse.ArgumentParser:
    p = run_parser("python -m dcn.detect", __doc__.split("\n\n")[0], kind="detection")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders of images")
    p.add_argument(
        "--output", type=Path, default=Path("detections"), help="output folder (default: detections/)"
    )
    p.add_argument(
        "--score-threshold", type=float, default=0.5, help="keep boxes scoring at least this (default 0.5)"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="the run's config (default: found next to the checkpoint)"
    )
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-pictures", dest="pictures", action="store_false", help="write detections.json only")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parser().parse_args(argv)
    summary = run(args)
    total = sum(len(r["detections"]) for r in summary["images"])
    print(f"{total} object(s) in {len(summary['images'])} image(s) -> {args.output / 'detections.json'}")
    if summary["skipped"]:
        print(f"{len(summary['skipped'])} file(s) could not be read and were skipped:", file=sys.stderr)
        for entry in summary["skipped"]:
            print(f"  {entry['file']}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    try:
        result = main()
    except (FileNotFoundError, ValueError, TypeError) as error:  # bad input: the message, not a traceback
        raise SystemExit(f"python -m dcn.detect: error: {error}") from None
    sys.exit(1 if result["skipped"] else 0)  # every good image has its result; the exit status flags the rest
