"""Square context crops around a target, as Siamese trackers see it (SiamFC / SiamRPN geometry).

A target box ``(cx, cy, w, h)`` (continuous pixel coordinates, see :mod:`dcn.geometry.boxes`)
gets a context margin ``p = context * (w + h)``; the template window is the square of side
``sqrt((w + p) * (h + p))`` centred on the target, resized to ``template_size`` pixels. The search window
has the same centre and scale, ``search_size / template_size`` times larger, so an object keeps its size
in pixels between the template and the search patch. Parts of a window outside the image are filled
with the image's mean colour ("mean padding"), so targets leaving the frame never raise.

:class:`CropWindow` maps boxes between image and patch coordinates (``box_to_patch`` /
``box_to_image`` are exact inverses); :func:`crop_patch` samples the patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CropWindow", "context_side", "crop_patch", "search_window", "template_window"]


def context_side(w: float, h: float, context: float = 0.5) -> float:
    """Side of the template window for a ``w x h`` target: ``sqrt((w + p) (h + p))``,
    ``p = context (w + h)``."""
    if not (w > 0 and h > 0):
        raise ValueError(f"target size must be positive, got w={w}, h={h}")
    pad = context * (w + h)
    return math.sqrt((w + pad) * (h + pad))


@dataclass(frozen=True)
class CropWindow:
    """A square window of ``side`` image pixels centred at ``(cx, cy)``, resampled to ``out_size`` pixels.

    Patch coordinates are continuous pixel coordinates of the ``out_size x out_size`` patch: the window
    centre lands at ``(out_size / 2, out_size / 2)`` and lengths scale by ``out_size / side``.
    """

    cx: float
    cy: float
    side: float
    out_size: int

    def __post_init__(self) -> None:
        if not (self.side > 0) or not math.isfinite(self.side):
            raise ValueError(f"crop side must be a positive finite number, got {self.side}")
        if int(self.out_size) != self.out_size or self.out_size < 1:
            raise ValueError(f"crop out_size must be a positive integer, got {self.out_size}")

    @property
    def scale(self) -> float:
        """Patch pixels per image pixel."""
        return self.out_size / self.side

    def box_to_patch(self, box: Tensor) -> Tensor:
        """``Tensor[..., 4]`` cxcywh in image coordinates -> the same boxes in patch coordinates."""
        c = self.out_size / 2
        s = self.scale
        return torch.stack(
            [
                (box[..., 0] - self.cx) * s + c,
                (box[..., 1] - self.cy) * s + c,
                box[..., 2] * s,
                box[..., 3] * s,
            ],
            -1,
        )

    def box_to_image(self, box: Tensor) -> Tensor:
        """``Tensor[..., 4]`` cxcywh in patch coordinates -> image coordinates (inverse of
        ``box_to_patch``)."""
        c = self.out_size / 2
        s = self.scale
        return torch.stack(
            [
                (box[..., 0] - c) / s + self.cx,
                (box[..., 1] - c) / s + self.cy,
                box[..., 2] / s,
                box[..., 3] / s,
            ],
            -1,
        )


def template_window(box: Tensor, template_size: int, context: float = 0.5) -> CropWindow:
    """The template window of a target ``box`` (``Tensor[4]`` cxcywh)."""
    cx, cy, w, h = (float(v) for v in box)
    return CropWindow(cx, cy, context_side(w, h, context), template_size)


def search_window(
    box: Tensor, template_size: int, search_size: int, context: float = 0.5, scale: float = 1.0
) -> CropWindow:
    """The search window of a target ``box`` (``Tensor[4]`` cxcywh): the template window's scale and
    centre, ``search_size`` pixels wide. ``scale`` > 1 shows more of the image (the object looks smaller)."""
    cx, cy, w, h = (float(v) for v in box)
    side = context_side(w, h, context) * search_size / template_size * scale
    return CropWindow(cx, cy, side, search_size)


def crop_patch(image: Tensor, window: CropWindow, fill: Optional[Tensor] = None) -> Tensor:
    """Sample ``window`` from ``image`` bilinearly.

    Args:
        image: ``Tensor[C, H, W]`` float.
        window: the square to sample.
        fill: ``Tensor[C]`` value for the part of the window outside the image; None: the image's
            per-channel mean.

    Returns:
        ``Tensor[C, out_size, out_size]``; patch pixel ``(i, j)`` samples image point
        ``(x0 + (j + 0.5) / scale, y0 + (i + 0.5) / scale)`` with ``x0 = cx - side / 2``.
    """
    if not isinstance(image, Tensor) or image.dim() != 3 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"crop_patch expects a float image Tensor[C, H, W], got {shape}")
    c, h, w = image.shape
    if fill is None:
        fill = image.mean(dim=(1, 2))
    fill = fill.to(image).reshape(c, 1, 1)
    n = window.out_size
    steps = (torch.arange(n, dtype=torch.float64) + 0.5) / window.scale
    xs = window.cx - window.side / 2 + steps
    ys = window.cy - window.side / 2 + steps
    # grid_sample with align_corners=False: -1 and +1 are the outer edges of the image (0 and W).
    gx = (2 * xs / w - 1).to(image.dtype)
    gy = (2 * ys / h - 1).to(image.dtype)
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].to(image.device)
    # Sample (image - fill) with zero padding, then add fill back: outside pixels become exactly fill
    # and border pixels blend towards it, as mean padding does.
    patch = F.grid_sample(
        (image - fill)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return patch[0] + fill
