"""Offset pictures of a trained network: ``python -m dcn.viz <checkpoint> (<image> | --sample K) [--point y,x]
[--out file.png]``.

Draws where the deformable layers of a ``train.py`` run sample for one output unit of an image file, or
of the K-th item of the run's own validation set (``--sample K``: the run's datamodule is rebuilt from
its saved config, so the image is exactly what the network saw in validation). See
:mod:`dcn.sampling_points` for what the picture shows and the geometry behind it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from dcn.console import run_parser
from dcn.figures import figure_to_array
from dcn.images import read_image
from dcn.sampling_points import SamplingPoints, draw_sampling_points, render_figure, sampling_points

__all__ = [
    "SamplingPoints",
    "draw_sampling_points",
    "figure_to_array",
    "load_image",
    "load_model",
    "main",
    "render_figure",
    "sampling_points",
    "validation_sample",
]


# ----------------------------------------------------------------------------------------------
# Command line: a checkpoint of train.py and an image file


def load_model(
    checkpoint: Path | str, config: Optional[Dict[str, Any]] = None
) -> Tuple[nn.Module, Dict[str, Any]]:
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
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR
        )
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    pixels = pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)
    if in_channels not in (1, 3):
        raise ValueError(f"only 1- or 3-channel networks can read image files, this one has {in_channels}")
    return 1.0 - pixels if invert else pixels


def validation_sample(config: Mapping[str, Any], index: int, source: str = "the run's config") -> Tensor:
    """The image of the ``index``-th item of a run's validation set, as the network receives it
    (Tensor[C, H, W]): the run's datamodule is rebuilt from ``config["data"]`` by
    :func:`dcn.trained_task.load_datamodule` (which checks its classes against dcn's allow-list first:
    the config may come from anyone; ``source`` names the file in errors), set up for validation, and
    its validation loader's dataset indexed, as the picture callbacks do.

    Raises:
        ValueError: no ``data`` group in the config, or (``UnsafeTargetError``) a class outside the
            allow-list.
        IndexError: ``index`` outside the validation set.
    """
    from omegaconf import DictConfig, OmegaConf

    from dcn import resolvers
    from dcn.trained_task import load_datamodule

    resolvers.register()  # a Hydra config.yaml may use dcn's resolvers (data paths)
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    if cfg.get("data") is None:
        raise ValueError(f"{source} has no 'data' group: cannot rebuild the run's validation set")
    datamodule = load_datamodule(cfg, source, num_workers=0)  # one item is read: no loader workers
    datamodule.setup("validate")
    loaders = datamodule.val_dataloader()
    dataset = (loaders[0] if isinstance(loaders, (list, tuple)) else loaders).dataset
    if not 0 <= index < len(dataset):
        raise IndexError(
            f"--sample {index}: the run's validation set has {len(dataset)} items (0..{len(dataset) - 1})"
        )
    item = dataset[index]
    image = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise TypeError(
            f"validation item {index} of {type(datamodule).__name__} does not start with an image "
            f"Tensor[C, H, W]; give an image file instead of --sample"
        )
    return image


def _parse_point(text: str) -> Tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--point must be 'y,x' in image pixels, e.g. 14,14; got {text!r}"
        ) from None
    return y, x


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = run_parser(
        "python -m dcn.viz",
        "Draw the sampling locations of a trained network's deformable layers for one output "
        "unit over an image (9^L points for L stacked 3x3 deformable layers).",
    )
    parser.add_argument("image", type=Path, nargs="?", help="an image file (PNG, JPEG, ...); or use --sample")
    parser.add_argument(
        "--sample",
        type=int,
        metavar="K",
        help="draw the K-th item (from 0) of the run's validation "
        "set instead of an image file (the datamodule is rebuilt from the run's config)",
    )
    parser.add_argument(
        "--point", type=_parse_point, help="y,x in image pixels (after --size); default: the centre"
    )
    parser.add_argument(
        "--size",
        type=int,
        help="resize the shorter image side to this (default: data.canvas_size "
        "of the run if it has one, else the image as is)",
    )
    parser.add_argument(
        "--invert",
        action="store_true",
        help="invert intensities (dark ink on white paper -> "
        "the digits/MNIST convention of white ink on black)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output PNG (default: <image name>.offsets.png next to the image; "
        "with --sample: val_<K>.offsets.png in the current directory)",
    )
    args = parser.parse_args(argv)
    if (args.image is None) == (args.sample is None):
        parser.error("give an image file or --sample K (one of them)")
    if args.sample is not None and (args.size or args.invert):
        parser.error("--size and --invert apply to image files; a --sample is drawn as the network saw it")

    from dcn.trained_task import checkpoint_of

    checkpoint = checkpoint_of(args.run)
    model, config = load_model(checkpoint)
    backbone = model.backbone if hasattr(model, "backbone") else model
    in_channels = int(getattr(backbone, "in_channels", 3))
    if args.sample is not None:
        from dcn.trained_task import find_run_config

        try:
            image = validation_sample(config, args.sample, str(find_run_config(checkpoint)))
        except (IndexError, ValueError) as error:  # an index out of range, a config without (safe) data
            parser.error(str(error))
        out = args.out or Path(f"val_{args.sample}.offsets.png")
    else:
        size = args.size or (config.get("data") or {}).get("canvas_size")
        image = load_image(args.image, in_channels, size, args.invert)
        out = args.out or args.image.with_name(f"{args.image.stem}.offsets.png")
    result = sampling_points(backbone, image, args.point)
    title = f"{len(result.layers)} deformable layer(s), unit {result.unit_index}: {len(result.points)} points"
    with torch.no_grad():
        logits = model(image[None]) if hasattr(model, "head") else None
    if logits is not None and logits.dim() == 2:
        title += f"\npredicted class {int(logits.argmax(1))}"
    if args.sample is not None:
        title = f"validation item {args.sample}; " + title
    fig = render_figure([image], [result], [title])
    fig.savefig(out, dpi=150)
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"{len(result.points)} sampling points of {', '.join(result.layers)} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
