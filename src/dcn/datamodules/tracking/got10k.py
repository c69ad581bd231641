"""GOT-10k: ``<root>/{train,val,test}/list.txt`` and one folder per sequence holding ``00000001.jpg``...,
``groundtruth.txt`` (``x,y,w,h`` per frame) and, in train / val, ``absence.label`` (1 where the object
is absent: such frames have no box to learn from or score against).

The test split's boxes are withheld by GOT-10k (only the first frame's is given), so the datamodule's
test stage runs on the val split, whose boxes are public; training uses train, validation pairs val.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

import torch

from dcn.datamodules.tracking.base import TrackingDataModule
from dcn.datamodules.tracking.sequence import TrackingSequence, find_frames, read_groundtruth
from dcn.datamodules.tracking.vot import sequence_names

__all__ = ["GOT10kDataModule", "read_got10k_sequence", "read_got10k_split"]

SPLITS = ("train", "val", "test")


def _read_absence(path: Path, sequence: str, num_frames: int) -> Optional[torch.Tensor]:
    if not path.is_file():
        return None
    values = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(values) != num_frames or any(v not in ("0", "1") for v in values):
        raise ValueError(
            f"sequence {sequence}: {path} must hold one 0 or 1 per frame ({num_frames} frames), "
            f"got {len(values)} lines"
        )
    return torch.tensor([v == "1" for v in values])


def read_got10k_sequence(folder: os.PathLike | str, require_all_boxes: bool = True) -> TrackingSequence:
    """Read one GOT-10k sequence folder.

    Args:
        folder: the sequence folder.
        require_all_boxes: False accepts a ground truth of the first frame only (the test split); the
            other frames are then unknown.

    Raises:
        FileNotFoundError / ValueError naming the sequence (and line), as :func:`read_vot_sequence`.
    """
    folder = Path(folder)
    name = folder.name
    if not folder.is_dir():
        raise FileNotFoundError(f"sequence {name}: folder {folder} not found")
    frames = find_frames(folder)
    if not frames:
        raise FileNotFoundError(f"sequence {name}: no image files in {folder}")
    absent = _read_absence(folder / "absence.label", name, len(frames))
    known = ~absent if absent is not None else torch.ones(len(frames), dtype=torch.bool)
    boxes = read_groundtruth(folder / "groundtruth.txt", name, known)
    if boxes.shape[0] != len(frames):
        if require_all_boxes or boxes.shape[0] != 1:
            raise ValueError(
                f"sequence {name}: {folder / 'groundtruth.txt'} has {boxes.shape[0]} lines but the sequence "
                f"has {len(frames)} frames; expected one box per frame"
            )
        boxes = torch.cat([boxes, torch.zeros(len(frames) - 1, 4)])
        known = torch.zeros(len(frames), dtype=torch.bool)
        known[0] = True
    return TrackingSequence(name, frames, boxes, known)


def read_got10k_split(
    root: os.PathLike | str, split: str, limit: Optional[int] = None
) -> List[TrackingSequence]:
    """The sequences of ``<root>/<split>/list.txt`` (the first ``limit`` of them)."""
    if split not in SPLITS:
        raise ValueError(f"GOT-10k split must be one of {list(SPLITS)}, got {split!r}")
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"GOT-10k split folder {folder} not found: data.root must hold train/, val/ and test/ "
            "(http://got-10k.aitestunion.com/downloads)"
        )
    names = sequence_names(folder)[:limit]
    return [read_got10k_sequence(folder / n, require_all_boxes=split != "test") for n in names]


class GOT10kDataModule(TrackingDataModule):
    """GOT-10k: train pairs from ``train``, validation pairs from ``val``, test sequences from ``val``.

    Args:
        root: the folder holding ``train/``, ``val/``, ``test/``.
        max_train_sequences: use only the first N training sequences (None: all 9,335).
        **kwargs: pair sampling and loader settings of :class:`TrackingDataModule`.
    """

    def __init__(
        self, root: os.PathLike | str, max_train_sequences: Optional[int] = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.max_train_sequences = max_train_sequences

    def load_split(self, split: str) -> List[TrackingSequence]:
        if split == "train":
            return read_got10k_split(self.root, "train", self.max_train_sequences)
        # Test on val: GOT-10k's test boxes are only available through its evaluation server.
        limit = self.max_test_sequences if split == "test" else None
        return read_got10k_split(self.root, "val", limit)
