"""Box formats and overlaps for tracking, in continuous pixel coordinates.

An image of width W and height H spans ``[0, W] x [0, H]``; pixel ``(i, j)`` covers ``[i, i+1) x
[j, j+1)`` and its centre is ``(i + 0.5, j + 0.5)``. Box areas are ``w * h`` (no "+1").

Formats (the last dimension of a ``Tensor[..., 4]``):
    ``xywh``   left, top, width, height: what VOT and GOT-10k ``groundtruth.txt`` files hold;
    ``cxcywh`` centre x, centre y, width, height: what anchors, crops and the tracker work in;
    ``xyxy``   left, top, right, bottom.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "box_iou_pairwise",
    "box_overlap",
    "centre_distance",
    "cxcywh_to_xywh",
    "cxcywh_to_xyxy",
    "polygon_to_xywh",
    "xywh_to_cxcywh",
    "xyxy_to_cxcywh",
]


def _check(boxes: Tensor, name: str = "boxes") -> None:
    if not isinstance(boxes, Tensor) or boxes.shape[-1:] != (4,):
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be a Tensor[..., 4], got {shape}")


def _converter(source: str, target: str):
    """``Tensor[..., 4]`` boxes in format ``source`` -> format ``target`` (torchvision's box_convert)."""

    def convert(boxes: Tensor) -> Tensor:
        _check(boxes)
        return box_convert(boxes, source, target)

    convert.__name__ = convert.__qualname__ = f"{source}_to_{target}"
    convert.__doc__ = f"``Tensor[..., 4]`` boxes {source} -> {target}."
    return convert


xywh_to_cxcywh = _converter("xywh", "cxcywh")
cxcywh_to_xywh = _converter("cxcywh", "xywh")
cxcywh_to_xyxy = _converter("cxcywh", "xyxy")
xyxy_to_cxcywh = _converter("xyxy", "cxcywh")


def polygon_to_xywh(polygon: Tensor) -> Tensor:
    """``Tensor[..., 2k]`` polygon (x1, y1, ..., xk, yk) -> its axis-aligned bounding box (x, y, w, h).

    VOT's rotated-rectangle ground truth (8 numbers) becomes the smallest upright box holding it.
    """
    if not isinstance(polygon, Tensor) or polygon.shape[-1] < 6 or polygon.shape[-1] % 2:
        shape = tuple(polygon.shape) if isinstance(polygon, Tensor) else type(polygon).__name__
        raise ValueError(f"polygon must be a Tensor[..., 2k] with k >= 3 points, got {shape}")
    xs, ys = polygon[..., 0::2], polygon[..., 1::2]
    x1, y1 = xs.amin(-1), ys.amin(-1)
    return torch.stack([x1, y1, xs.amax(-1) - x1, ys.amax(-1) - y1], dim=-1)


def box_overlap(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise IoU of ``a`` and ``b`` (``Tensor[..., 4]`` cxcywh, broadcastable) -> ``Tensor[...]``.

    Boxes with no area (w or h <= 0) overlap nothing: their IoU is 0, never NaN (unlike
    ``torchvision.ops.box_iou``, which is also pairwise only; tracking compares box sequences
    element by element and meets empty predictions).
    """
    _check(a, "a")
    _check(b, "b")
    a, b = torch.broadcast_tensors(cxcywh_to_xyxy(a), cxcywh_to_xyxy(b))
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(
        union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter)
    )


def box_iou_pairwise(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` (``Tensor[N, 4]`` cxcywh) with every box of ``b`` (``Tensor[M, 4]``)
    -> ``Tensor[N, M]``."""
    return box_overlap(a[:, None, :], b[None, :, :])


def centre_distance(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distance between the centres of ``a`` and ``b`` (``Tensor[..., 4]`` cxcywh) ->
    ``Tensor[...]``."""
    _check(a, "a")
    _check(b, "b")
    return torch.linalg.vector_norm(a[..., :2] - b[..., :2], dim=-1)
