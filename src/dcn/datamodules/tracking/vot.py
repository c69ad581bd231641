"""VOT-layout tracking data: ``<root>/list.txt`` names one sequence folder per line; each folder holds
its frames (or a ``color/`` sub-folder of them, VOT 2016+) and a ``groundtruth.txt`` with one box per frame.

:class:`VOTDataModule` splits a root's sequences into train / val / test (VOT has no official split)
and trains on frame pairs (:mod:`dcn.datamodules.tracking.pairs`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from dcn.datamodules.tracking.base import TrackingDataModule
from dcn.datamodules.tracking.sequence import TrackingSequence, find_frames, read_groundtruth

__all__ = ["VOTDataModule", "read_vot_root", "read_vot_sequence"]


def read_vot_sequence(folder: os.PathLike | str, name: Optional[str] = None) -> TrackingSequence:
    """Read one VOT sequence folder.

    Raises:
        FileNotFoundError: the folder, its frames or its ``groundtruth.txt`` are missing.
        ValueError: naming the sequence (and line): a ground-truth line count that differs from the
            frame count, a line with other than 4 or 8 numbers, a box without area.
    """
    folder = Path(folder)
    name = name or folder.name
    if not folder.is_dir():
        raise FileNotFoundError(f"sequence {name}: folder {folder} not found")
    frames = find_frames(folder)
    if not frames:
        raise FileNotFoundError(f"sequence {name}: no image files in {folder} (or {folder / 'color'})")
    boxes = read_groundtruth(folder / "groundtruth.txt", name)
    if boxes.shape[0] != len(frames):
        raise ValueError(
            f"sequence {name}: {folder / 'groundtruth.txt'} has {boxes.shape[0]} lines but the sequence has "
            f"{len(frames)} frames; expected one box per frame"
        )
    return TrackingSequence(name, frames, boxes)


def sequence_names(root: os.PathLike | str, only: Optional[Sequence[str]] = None) -> List[str]:
    """The names in ``<root>/list.txt`` (blank lines skipped), in its order; with ``only``, just those
    (each must be listed)."""
    root = Path(root)
    listing = root / "list.txt"
    if not listing.is_file():
        raise FileNotFoundError(
            f"{listing} not found: a VOT-layout root holds list.txt (one sequence folder name per line) "
            "and the sequence folders; set data.root to such a folder"
        )
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{listing} lists no sequence")
    if only is not None:
        missing = sorted(set(only) - set(names))
        if missing:
            raise ValueError(f"sequence(s) {missing} are not in {listing}")
        names = [n for n in names if n in set(only)]
    return names


def read_vot_root(root: os.PathLike | str, names: Optional[Sequence[str]] = None) -> List[TrackingSequence]:
    """Every sequence of ``<root>/list.txt`` (or only ``names``), read and checked."""
    root = Path(root)
    return [read_vot_sequence(root / name, name) for name in sequence_names(root, names)]


class VOTDataModule(TrackingDataModule):
    """Sequences of one VOT-layout root, split by sequence into train / val / test.

    Args:
        root: the folder holding ``list.txt``.
        val_sequences, test_sequences: sequence names for validation / test; None draws
            ``val_fraction`` / ``test_fraction`` of the sequences (at least one each) with ``split_seed``.
            The rest train.
        **kwargs: pair sampling and loader settings of :class:`TrackingDataModule`.
    """

    def __init__(
        self,
        root: os.PathLike | str,
        val_sequences: Optional[Sequence[str]] = None,
        test_sequences: Optional[Sequence[str]] = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"data.val_fraction and data.test_fraction must be in [0, 1) with a sum below 1, "
                f"got {val_fraction} and {test_fraction}"
            )
        self.root = Path(root)
        self.val_names = list(val_sequences) if val_sequences is not None else None
        self.test_names = list(test_sequences) if test_sequences is not None else None
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed

    def split_names(self) -> "dict[str, List[str]]":
        """``{"train": [...], "val": [...], "test": [...]}`` sequence names."""
        names = sequence_names(self.root)
        order = [names[i] for i in np.random.default_rng(self.split_seed).permutation(len(names))]
        val = self.val_names
        test = self.test_names
        if test is None:
            rest = [n for n in order if n not in set(val or [])]
            test = rest[: max(1, round(self.test_fraction * len(names)))] if self.test_fraction > 0 else []
        if val is None:
            rest = [n for n in order if n not in set(test)]
            val = rest[: max(1, round(self.val_fraction * len(names)))] if self.val_fraction > 0 else []
        train = [n for n in names if n not in set(val) | set(test)]
        if not train:
            raise ValueError(
                f"{self.root / 'list.txt'}: no sequence is left for training after the val/test split"
            )
        return {"train": train, "val": list(val), "test": list(test)}

    def load_split(self, split: str) -> List[TrackingSequence]:
        return read_vot_root(self.root, self.split_names()[split])
