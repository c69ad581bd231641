"""Class-index label images as PASCAL VOC stores them: palette ("P" mode) PNGs, 255 = ignore.

A VOC label PNG holds one class index per pixel; its palette only makes the file viewable (class k
is drawn in ``voc_palette()[k]``, the ignore value 255 in cream). Reading one gives the indices, not
colours, so :func:`read_label_png` refuses an RGB PNG rather than guess.

Many derived datasets save their labels as RGB pictures painted with that colour map instead.
:func:`read_label_image` reads both: ``label_format="index"`` (palette or greyscale: the values are the
indices), ``"rgb_palette"`` (RGB: each colour is looked up in the VOC colour map of the first
``num_classes`` entries, plus cream = 255 = ignore) or ``"auto"`` (by the file's image mode). A colour
outside that map (a JPEG-compressed label, a colour map of another dataset, a class beyond the class
list) is a :class:`LabelError` naming the file, the colour and a pixel where it occurs.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image

__all__ = [
    "IGNORE_INDEX",
    "LABEL_FORMATS",
    "LabelError",
    "check_label_values",
    "decode_rgb_label",
    "read_label_image",
    "read_label_png",
    "voc_palette",
    "write_label_png",
]

IGNORE_INDEX = 255  # VOC's "void": object borders and difficult regions, excluded from loss and metrics

# Modes whose pixel values are class indices: palette images and 8-bit greyscale ones.
_INDEX_MODES = ("P", "L")
# Modes read as colours under label_format="auto" / "rgb_palette" (alpha, if any, is dropped).
_COLOUR_MODES = ("RGB", "RGBA")
LABEL_FORMATS = ("auto", "index", "rgb_palette")


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
        raise ValueError(
            f"a label image must be uint8[H, W] class indices, got {label.dtype}{list(label.shape)}"
        )
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
                f"{path}: label PNGs must be class-index images (palette 'P' or greyscale 'L' mode, one "
                f"class index per pixel, 255 = ignore), but this one is {image.mode!r}. An RGB picture of "
                "the VOC colours cannot be read as labels: save the class indices instead "
                "(dcn.datamodules.voc.label_png.write_label_png)"
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


def decode_rgb_label(rgb: np.ndarray, num_classes: int, source: os.PathLike | str = "label") -> np.ndarray:
    """Class indices (``uint8[H, W]``) of an RGB label painted with the VOC colour map.

    Args:
        rgb: ``uint8[H, W, 3]``.
        num_classes: colours ``voc_palette()[0:num_classes]`` are classes ``0..num_classes-1``; the
            ignore colour ``voc_palette()[255]`` (cream) is 255.
        source: names the file in errors.

    Raises:
        LabelError: a colour outside that map, naming ``source``, the colour and one pixel ``(row, column)``
            where it occurs (and how many pixels have it).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise LabelError(f"{source}: an RGB label must be uint8[H, W, 3], got {rgb.dtype}{list(rgb.shape)}")
    palette = voc_palette().astype(np.int64)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    known = {int((r << 16) | (g << 8) | b): k for k, (r, g, b) in enumerate(palette[:num_classes])}
    r, g, b = palette[IGNORE_INDEX]
    known.setdefault(int((r << 16) | (g << 8) | b), IGNORE_INDEX)
    colours, inverse = np.unique(codes, return_inverse=True)
    lookup = np.empty(len(colours), dtype=np.uint8)
    for i, code in enumerate(colours.tolist()):
        if code not in known:
            row, column = (int(v) for v in np.argwhere(codes == code)[0])
            colour = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
            first = [tuple(int(c) for c in p) for p in palette[: min(num_classes, 4)]]
            raise LabelError(
                f"{source}: colour RGB{colour} at pixel (row {row}, column {column}) "
                f"({int((codes == code).sum())} pixels) is not in the VOC colour map of the {num_classes} "
                f"classes (classes 0..{num_classes - 1}: {first}...; ignore: "
                f"{tuple(int(c) for c in palette[IGNORE_INDEX])}). A JPEG-compressed label, another colour "
                "map or a class beyond data.class_names? Set data.label_format=index for class-index images"
            )
        lookup[i] = known[code]
    return lookup[inverse.reshape(codes.shape)]


def read_label_image(path: os.PathLike | str, num_classes: int, label_format: str = "auto") -> np.ndarray:
    """A segmentation label as ``uint8[H, W]`` class indices (255 = ignore), checked against ``num_classes``.

    Args:
        path: the label file.
        num_classes: the class count (the colour map's length for RGB labels).
        label_format: ``index`` (palette / greyscale images of class indices: :func:`read_label_png`),
            ``rgb_palette`` (colours decoded by :func:`decode_rgb_label`; a palette image is read as its
            colours) or ``auto`` (``index`` for 'P' and 'L' images, ``rgb_palette`` for 'RGB' and 'RGBA').

    Raises:
        LabelError: naming the file: a mode that fits neither format, a colour outside the map, a
            class index ``>= num_classes``.
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"data.label_format must be one of {list(LABEL_FORMATS)}, got {label_format!r}")
    if label_format == "index":
        return read_label_png(path, num_classes)
    with Image.open(path) as image:
        mode = image.mode
        if label_format == "auto" and mode in _INDEX_MODES:
            label = np.array(image, dtype=np.uint8)
            check_label_values(label, num_classes, path)
            return label
        if mode not in _COLOUR_MODES + _INDEX_MODES:
            raise LabelError(
                f"{path}: a label image must be a class-index image ('P' or 'L') or an RGB picture of the "
                f"VOC colour map ('RGB'), but this one is {mode!r} (data.label_format={label_format})"
            )
        rgb = np.array(image.convert("RGB"), dtype=np.uint8)
    return decode_rgb_label(rgb, num_classes, path)
