"""Image vocabulary shared by every layer: ImageNet normalisation constants and the one function that
reads image files.

(A ground-floor module: datamodules, tasks and tools import it; it imports nothing of dcn.)
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageReadError", "read_image", "read_image_array"]

# torchvision's ImageNet statistics (RGB, inputs in [0, 1]): what pretrained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageReadError(OSError):
    """An image file that cannot be read (missing, truncated, not an image); the message names it."""


def read_image(path: os.PathLike | str, mode: Optional[str] = "RGB") -> Image.Image:
    """Read ``path`` completely and return it as a PIL image in ``mode`` (None: as stored).

    Every image read of dcn goes through here, so that a bad file (truncated JPEG, not an image at
    all) fails with its name instead of PIL's bare ``image file is truncated``. Greyscale and palette
    images are converted (``mode="RGB"``: the 3 grayscale photos of a dataset need no special case).

    Raises:
        ImageReadError: the file is missing, unreadable or truncated.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncation shows up here, not later in a transform
            return image.convert(mode) if mode is not None and image.mode != mode else image.copy()
    except FileNotFoundError as error:
        raise ImageReadError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error


def read_image_array(path: os.PathLike | str, mode: Optional[str] = "RGB") -> np.ndarray:
    """:func:`read_image` as a ``uint8`` array ``(H, W, C)`` (``(H, W)`` for single-channel modes)."""
    return np.asarray(read_image(path, mode))
