r"""Track the object of one sequence with a trained SiamRPN:
``python -m dcn.track <checkpoint> <sequence dir>``.

The network is rebuilt from the run's config (``<run dir>/.hydra/config.yaml``, found from the
checkpoint's location, or ``--config``) and loaded from the checkpoint. The sequence folder is a VOT or
GOT-10k sequence (frames, or ``color/``, and ``groundtruth.txt``); the tracker starts from the first
frame's box (or ``--init x,y,w,h``) and runs one pass over all frames.

Writes the predicted boxes in the dataset's result format, one ``x,y,w,h`` line per frame (comma
separated, frame 0 = the initial box): VOT ``<output>/<name>.txt``; GOT-10k ``<output>/<name>/<name>_001.txt``
plus ``<name>_time.txt`` (seconds per frame). With ground truth for every frame it prints the success
AUC and precision at 20 px; ``--frames DIR`` saves each frame with the predicted (red) and true (green)
boxes and ``--gif FILE`` an animation of them, each frame captioned with its number and the IoU of the
predicted with the true box (white on black, top left).

Examples::

    python -m dcn.track logs/siamrpn_synthetic/runs/<run>/checkpoints/last.ckpt \
        data/synthetic_vot/tracks-*/test/seq_0000 --gif seq0.gif
    python -m dcn.track run/checkpoints/epoch_019.ckpt /data/vot2013/bolt --output results/ \
        --frames frames/bolt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dcn.console import run_parser

__all__ = ["build_task", "frame_caption", "main", "run", "write_boxes"]

FORMATS = ("vot", "got10k")


def build_task(checkpoint: Path, config: Optional[Path] = None, device: str = "cpu"):
    """Rebuild the :class:`~dcn.tasks.tracking.TrackingTask` of a run and load ``checkpoint`` into it
    (eval mode)."""
    from dcn.tasks.tracking import TrackingTask
    from dcn.trained_task import load_trained_task

    return load_trained_task(checkpoint, config, task_type=TrackingTask, device=device)[0]


def read_sequence(folder: Path):
    """A VOT or GOT-10k sequence folder (GOT-10k test folders have only the first box) ->
    (sequence, format)."""
    from dcn.datamodules.tracking.got10k import read_got10k_sequence

    sequence = read_got10k_sequence(folder, require_all_boxes=False)
    got10k = (folder / "absence.label").is_file() or folder.name.startswith("GOT-10k")
    return sequence, "got10k" if got10k else "vot"


def write_boxes(boxes: Tensor, output: Path, name: str, fmt: str, seconds: Sequence[float] = ()) -> Path:
    """Write ``boxes`` (``Tensor[T, 4]`` xywh) in the dataset's result format; returns the box file."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    lines = "\n".join(",".join(f"{v:.4f}" for v in box) for box in boxes.tolist()) + "\n"
    if fmt == "vot":
        path = output / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        path = output / name / f"{name}_001.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if seconds:
            (output / name / f"{name}_time.txt").write_text("\n".join(f"{s:.6f}" for s in seconds) + "\n")
    path.write_text(lines)
    return path


def frame_caption(index: int, count: int, iou: Optional[float]) -> str:
    """The caption of frame ``index`` (from 0) of ``count``: ``frame 3/120  IoU 0.71``, numbered from 1
    as the frame files are; ``IoU n/a`` where the frame has no ground truth."""
    return f"frame {index + 1}/{count}  IoU {'n/a' if iou is None else f'{iou:.2f}'}"


def _draw(frame: Tensor, predicted: Tensor, truth: Optional[Tensor], caption: str) -> Image.Image:
    image = Image.fromarray((frame.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(image)
    for box, colour in ((truth, (0, 255, 0)), (predicted, (255, 0, 0))):
        if box is not None:
            x, y, w, h = box.tolist()
            draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
    # White on a black box: readable on any frame, and drawn last so no box hides it.
    font = ImageFont.load_default()
    _, _, right, bottom = draw.textbbox((3, 2), caption, font=font)
    draw.rectangle((0, 0, right + 3, bottom + 2), fill=(0, 0, 0))
    draw.text((3, 2), caption, fill=(255, 255, 255), font=font)
    return image


def run(args: argparse.Namespace) -> dict:
    from dcn.geometry.boxes import box_overlap, centre_distance, xywh_to_cxcywh
    from dcn.tasks.tracking.metrics import precision_at, success_auc
    from dcn.trained_task import checkpoint_of

    checkpoint, folder = checkpoint_of(args.run), Path(args.sequence)
    sequence, detected = read_sequence(folder)
    fmt = args.format or detected
    count = len(sequence) if args.max_frames is None else min(args.max_frames, len(sequence))
    init = sequence.boxes[0]
    if args.init is not None:
        init = torch.tensor([float(v) for v in args.init.split(",")])
        if init.shape != (4,):
            raise ValueError(f"--init must be x,y,w,h, got {args.init!r}")
    task = build_task(checkpoint, Path(args.config) if args.config else None, args.device)
    tracker = task.make_tracker()

    boxes: List[Tensor] = [init.float()]
    seconds: List[float] = []
    first = sequence.frame(0)
    start = time.perf_counter()
    tracker.init(first, init)
    seconds.append(time.perf_counter() - start)
    images: List[Image.Image] = []
    ious: List[Optional[float]] = []
    want_pictures = bool(args.frames or args.gif)

    def record(t: int, frame: Tensor) -> None:
        truth = sequence.boxes[t].float() if sequence.known[t] else None
        iou = None if truth is None else float(box_overlap(xywh_to_cxcywh(boxes[t]), xywh_to_cxcywh(truth)))
        ious.append(iou)
        if want_pictures:
            images.append(_draw(frame, boxes[t], truth, frame_caption(t, count, iou)))

    record(0, first)
    for t in range(1, count):
        frame = sequence.frame(t)
        start = time.perf_counter()
        boxes.append(tracker.update(frame).float())
        seconds.append(time.perf_counter() - start)
        record(t, frame)
    predictions = torch.stack(boxes)
    path = write_boxes(predictions, Path(args.output), sequence.name, fmt, seconds)
    summary = {
        "sequence": sequence.name,
        "frames": count,
        "boxes": str(path),
        "fps": count / max(sum(seconds), 1e-9),
        "iou": ious,
    }

    known = sequence.known[:count].clone()
    known[0] = False
    if args.init is None and known.any():
        pred, truth = (
            xywh_to_cxcywh(predictions[known].double()),
            xywh_to_cxcywh(sequence.boxes[:count][known].double()),
        )
        summary["success_auc"] = success_auc(box_overlap(pred, truth))
        summary["precision20"] = precision_at(centre_distance(pred, truth), 20.0)
    if args.frames:
        out = Path(args.frames)
        out.mkdir(parents=True, exist_ok=True)
        for t, image in enumerate(images):
            image.save(out / f"{t + 1:08d}.png")
        summary["frames_dir"] = str(out)
    if args.gif:
        Path(args.gif).parent.mkdir(parents=True, exist_ok=True)
        images[0].save(args.gif, save_all=True, append_images=images[1:], duration=80, loop=0)
        summary["gif"] = str(args.gif)
    return summary


def parser() -> argparse.ArgumentParser:
    p = run_parser("python -m dcn.track", __doc__.split("\n\n")[0], kind="tracking")
    p.add_argument("sequence", help="a VOT or GOT-10k sequence folder (frames + groundtruth.txt)")
    p.add_argument("--output", default=".", help="folder for the predicted boxes (default: the current one)")
    p.add_argument("--format", choices=FORMATS, default=None, help="result format (default: the sequence's)")
    p.add_argument("--config", default=None, help="the run's config (default: <run dir>/.hydra/config.yaml)")
    p.add_argument("--init", default=None, help="initial box x,y,w,h (default: the first ground-truth box)")
    p.add_argument("--frames", default=None, help="save annotated frames to this folder")
    p.add_argument("--gif", default=None, help="save an annotated animation to this file")
    p.add_argument("--max-frames", type=int, default=None, help="track only the first N frames")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    summary = run(parser().parse_args(argv))
    scores = "".join(
        f", {key} {summary[key]:.3f}" for key in ("success_auc", "precision20") if key in summary
    )
    print(
        f"{summary['sequence']}: {summary['frames']} frames at {summary['fps']:.1f} fps{scores} "
        f"-> {summary['boxes']}"
    )
    return summary


if __name__ == "__main__":
    main()
