"""One tracking sequence on disk: its frame files and true boxes, read and checked.

Ground-truth files (VOT's and GOT-10k's ``groundtruth.txt``) hold one line per frame with 4 numbers
``x, y, w, h`` or 8 numbers (a polygon, e.g. VOT's rotated rectangle, which becomes its axis-aligned
bounding box), separated by commas, spaces or tabs. Coordinates are continuous pixels (see
:mod:`dcn.geometry.boxes`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from dcn.geometry.boxes import polygon_to_xywh
from dcn.images import read_image_array

__all__ = ["IMAGE_EXTENSIONS", "TrackingSequence", "find_frames", "read_groundtruth"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_SEPARATORS = re.compile(r"[,\s]+")


class TrackingSequence:
    """Frames ``frames`` (paths, in order) of one object with true boxes ``boxes`` (``Tensor[T, 4]`` xywh).

    ``known`` (``Tensor[T]`` bool) is False for frames whose truth is unknown (GOT-10k's absent object,
    a ground-truth line of NaN): they are never sampled for training and never scored; their boxes are
    stored as zeros. The first frame must be known (a tracker starts from it). ``frame(t)`` reads frame t
    as ``Tensor[3, H, W]`` RGB floats in [0, 1].
    """

    def __init__(
        self, name: str, frames: Sequence[Path], boxes: Tensor, known: Optional[Tensor] = None
    ) -> None:
        if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != len(frames):
            raise ValueError(
                f"sequence {name}: boxes must be Tensor[{len(frames)}, 4], got {tuple(boxes.shape)}"
            )
        self.name = name
        self.frames = [Path(f) for f in frames]
        finite = torch.isfinite(boxes).all(dim=1)
        self.boxes = torch.where(finite[:, None], boxes, torch.zeros_like(boxes)).float()
        self.known = (
            known.bool() if known is not None else torch.ones(len(frames), dtype=torch.bool)
        ) & finite
        if len(frames) and not bool(self.known[0]):
            raise ValueError(
                f"sequence {name}: the object's box in the first frame is unknown (absent or NaN); "
                "a tracker starts from the first frame's box"
            )

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return f"TrackingSequence({self.name!r}, {len(self)} frames)"

    def frame(self, t: int) -> Tensor:
        array = read_image_array(self.frames[t]).astype(np.float32)
        # numpy for the conversion: small element-wise torch ops pay thread start-up on busy machines.
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)) / np.float32(255.0))

    def truncated(self, max_frames: Optional[int]) -> "TrackingSequence":
        """The first ``max_frames`` frames (all for None)."""
        if max_frames is None or max_frames >= len(self):
            return self
        return TrackingSequence(
            self.name, self.frames[:max_frames], self.boxes[:max_frames], self.known[:max_frames]
        )


def find_frames(folder: Path) -> List[Path]:
    """Image files of a sequence, sorted by name: in ``folder/color/`` (VOT 2016+) if it exists, else
    ``folder``."""
    folder = Path(folder)
    if (folder / "color").is_dir():
        folder = folder / "color"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_groundtruth(path: os.PathLike | str, sequence: str, known: Optional[Tensor] = None) -> Tensor:
    """Read a ground-truth file -> ``Tensor[T, 4]`` xywh boxes.

    A line of NaN only (``nan,nan,nan,nan``; VOT and LaSOT mark frames without the object so) is an
    absent object: its row is NaN, and :class:`TrackingSequence` counts the frame as unknown.

    Args:
        path: the ``groundtruth.txt``.
        sequence: the sequence's name, for error messages.
        known: ``Tensor[T]`` bool; boxes of unknown frames (False) may have any size.

    Raises:
        ValueError: naming the sequence and line, for a line with other than 4 or 8 numbers, a number
            that does not parse, an infinite value or a NaN among numbers (a corrupt line, not an absent
            object), or a box (of a known frame) without positive width and height.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sequence {sequence}: ground truth file {path} not found")
    boxes = []
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():  # a trailing newline is not a frame
        lines.pop()
    for number, line in enumerate(lines, start=1):
        fields = [f for f in _SEPARATORS.split(line.strip()) if f]
        if len(fields) not in (4, 8):
            raise ValueError(
                f"sequence {sequence}: {path} line {number} has {len(fields)} numbers ({line.strip()!r}); "
                "expected 4 (x, y, w, h) or 8 (a polygon x1, y1, ..., x4, y4)"
            )
        try:
            values = torch.tensor([float(f) for f in fields], dtype=torch.float64)
        except ValueError:
            raise ValueError(
                f"sequence {sequence}: {path} line {number} is not numbers: {line.strip()!r}"
            ) from None
        if torch.isnan(values).all():
            boxes.append(torch.full((4,), float("nan"), dtype=torch.float64))
            continue
        if not torch.isfinite(values).all():
            raise ValueError(
                f"sequence {sequence}: {path} line {number} holds a non-finite value ({line.strip()!r}); "
                "a box needs finite numbers (a line of NaN only marks a frame without the object)"
            )
        box = values if len(fields) == 4 else polygon_to_xywh(values)
        is_known = known is None or (number - 1 < len(known) and bool(known[number - 1]))
        if is_known and not (box[2] > 0 and box[3] > 0):
            raise ValueError(
                f"sequence {sequence}: {path} line {number} is a box without area "
                f"(w={float(box[2]):g}, h={float(box[3]):g}); every frame needs the object's box"
            )
        boxes.append(box)
    if not boxes:
        raise ValueError(f"sequence {sequence}: {path} is empty")
    return torch.stack(boxes).float()
