"""Offset pictures of a trained network: ``python -m dcn.viz <checkpoint> <image> [--point y,x] [--out file.png]``.

Draws where the deformable layers of a ``train.py`` run sample for one output unit of the image (see
:mod:`dcn.sampling_points` for what the picture shows and the geometry behind it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from dcn.figures import figure_to_array
from dcn.images import read_image
from dcn.sampling_points import SamplingPoints, draw_sampling_points, render_figure, sampling_points

__all__ = ["SamplingPoints", "draw_sampling_points", "figure_to_array", "load_image", "load_model", "main",
           "render_figure", "sampling_points"]


# ----------------------------------------------------------------------------------------------
# Command line: a checkpoint of train.py and an image file


def load_model(checkpoint: Path | str, config: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the task module of a train.py run from its config and load ``checkpoint`` into it
    (:func:`dcn.trained_task.load_trained_task`). Returns the model (eval mode) and the run's config."""
    from omegaconf import OmegaConf

    from dcn.trained_task import load_trained_task

    model, cfg = load_trained_task(checkpoint, config)
    return model, OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def load_image(path: Path | str, in_channels: int, size: Optional[int], invert: bool = False) -> Tensor:
    """Read an image file as the network's input: Tensor[C, H, W] float in [0, 1], resized so that its
    shorter side is ``size`` (None: as is)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    img = read_image(path, "L" if in_channels == 1 else "RGB")
    if size:
        scale = size / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    pixels = pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)
    if in_channels not in (1, 3):
        raise ValueError(f"only 1- or 3-channel networks can read image files, this one has {in_channels}")
    return 1.0 - pixels if invert else pixels


def _parse_point(text: str) -> Tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--point must be 'y,x' in image pixels, e.g. 14,14; got {text!r}") from None
    return y, x


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dcn.viz",
        description="Draw the sampling locations of a trained network's deformable layers for one output unit "
        "over an image (9^L points for L stacked 3x3 deformable layers).",
    )
    parser.add_argument("checkpoint", type=Path, help="a train.py checkpoint (<run dir>/checkpoints/*.ckpt)")
    parser.add_argument("image", type=Path, help="an image file (PNG, JPEG, ...)")
    parser.add_argument("--point", type=_parse_point, help="y,x in image pixels (after --size); default: the centre")
    parser.add_argument("--size", type=int, help="resize the shorter image side to this (default: data.canvas_size "
                        "of the run if it has one, else the image as is)")
    parser.add_argument("--invert", action="store_true", help="invert intensities (dark ink on white paper -> "
                        "the digits/MNIST convention of white ink on black)")
    parser.add_argument("--out", type=Path, help="output PNG (default: <image name>.offsets.png next to the image)")
    args = parser.parse_args(argv)

    model, config = load_model(args.checkpoint)
    backbone = model.backbone if hasattr(model, "backbone") else model
    in_channels = int(getattr(backbone, "in_channels", 3))
    size = args.size or (config.get("data") or {}).get("canvas_size")
    image = load_image(args.image, in_channels, size, args.invert)
    result = sampling_points(backbone, image, args.point)
    title = f"{len(result.layers)} deformable layer(s), unit {result.unit_index}: {len(result.points)} points"
    with torch.no_grad():
        logits = model(image[None]) if hasattr(model, "head") else None
    if logits is not None and logits.dim() == 2:
        title += f"\npredicted class {int(logits.argmax(1))}"
    fig = render_figure([image], [result], [title])
    out = args.out or args.image.with_name(f"{args.image.stem}.offsets.png")
    fig.savefig(out, dpi=150)
    print(f"{len(result.points)} sampling points of {', '.join(result.layers)} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
