"""Class-index label images as PASCAL VOC stores them: palette ("P" mode) PNGs, 255 = ignore.

A VOC label PNG holds one class index per pixel; its palette only makes the file viewable (class k
is drawn in ``voc_palette()[k]``, the ignore value 255 in cream). Reading one gives the indices, not
colours, so an RGB PNG cannot be a label: :func:`read_label_png` refuses it rather than guess.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image

__all__ = ["IGNORE_INDEX", "LabelError", "check_label_values", "read_label_png", "voc_palette", "write_label_png"]

IGNORE_INDEX = 255  # VOC's "void": object borders and difficult regions, excluded from loss and metrics

# Modes whose pixel values are class indices: palette images and 8-bit greyscale ones.
_INDEX_MODES = ("P", "L")


class LabelError(ValueError):
    """A label file that is not a valid class-index image for the configured classes."""


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, ``uint8[num_colors, 3]``: class k -> RGB (0 black, 1 dark red, ...).

    VOC's devkit builds it by spreading the bits of the class index over the three channels, from
    the most significant bit of each channel down, so nearby indices get distinct colours.
    """
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for k in range(num_colors):
        c, r, g, b = k, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[k] = (r, g, b)
    return palette


def write_label_png(path: os.PathLike | str, label: np.ndarray) -> None:
    """Save ``label`` (``uint8[H, W]`` class indices, 255 = ignore) as a VOC palette PNG."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"a label image must be uint8[H, W] class indices, got {label.dtype}{list(label.shape)}")
    image = Image.fromarray(label, mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    image.save(path)


def read_label_png(path: os.PathLike | str, num_classes: Optional[int] = None) -> np.ndarray:
    """Read a class-index PNG as ``uint8[H, W]``; check its values when ``num_classes`` is given.

    Raises:
        LabelError: the PNG is not a palette or greyscale image (e.g. an RGB rendering of the
            colours), or (with ``num_classes``) holds a value >= num_classes other than 255.
    """
    with Image.open(path) as image:
        if image.mode not in _INDEX_MODES:
            raise LabelError(
                f"{path}: label PNGs must be class-index images (palette 'P' or greyscale 'L' mode, one class "
                f"index per pixel, 255 = ignore), but this one is {image.mode!r}. An RGB picture of the VOC "
                "colours cannot be read as labels: save the class indices instead (dcn.datamodules.voc.label_png."
                "write_label_png)"
            )
        label = np.array(image, dtype=np.uint8)
    if num_classes is not None:
        check_label_values(label, num_classes, path)
    return label


def check_label_values(label: np.ndarray, num_classes: int, source: os.PathLike | str) -> None:
    """Raise :class:`LabelError` naming ``source`` and the value if ``label`` holds a class index
    ``>= num_classes`` other than the ignore value 255."""
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise LabelError(
            f"{source}: label value {int(bad[0])} is not a class index for num_classes={num_classes} "
            f"(valid: 0..{num_classes - 1}, and {IGNORE_INDEX} = ignore); values found: {values.tolist()}. "
            "Set data.num_classes / data.class_names to the dataset's classes"
        )
