"""OTB-layout tracking sequences (OTB-2013/2015 and the many public sequences shipped the same way).

Layout read::

    <root>/<sequence>/img/0001.jpg, 0002.jpg, ...      frames (sorted by name; any start number)
    <root>/<sequence>/groundtruth_rect.txt             one box x,y,w,h per frame

Ground-truth lines separate their four numbers with commas, tabs or spaces, even mixed within one file
(OTB-2015 has all three). A sequence with two annotated objects ships ``groundtruth_rect.1.txt`` and
``groundtruth_rect.2.txt`` instead (Jogging, Skating2): each becomes a sequence of its own, named
``<sequence>-1`` and ``<sequence>-2`` (pysot's and the OTB toolkit's names). Empty ground-truth files
are skipped.

When a ground truth has fewer lines than the folder has frames, the boxes belong to the first frames
(OTB's Diving, Football1, Freeman3, Freeman4), except for the sequences of :data:`OTB_FIRST_FRAMES`,
whose annotation starts later (David: frames 300..770); more lines than frames is an error. Boxes are
used as written (OTB's are 1-based MATLAB pixel coordinates; prediction and truth are compared in the
same coordinates, so scores are unaffected).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from dcn.datamodules.tracking.sequence import TrackingSequence, find_frames, read_groundtruth

__all__ = ["OTB_FIRST_FRAMES", "read_otb_root", "read_otb_sequence"]

# OTB sequences whose ground truth starts after the first image (1-based frame number of its first line),
# from the OTB benchmark's sequence table. The others with fewer boxes than frames start at frame 1.
OTB_FIRST_FRAMES: Dict[str, int] = {"David": 300}

_GROUNDTRUTH = "groundtruth_rect.txt"


def _groundtruth_files(folder: Path) -> List[Tuple[str, Path]]:
    """``[(sequence name, ground-truth file)]`` of one OTB folder (one, or one per annotated object)."""
    single = folder / _GROUNDTRUTH
    if single.is_file() and single.stat().st_size > 0:
        return [(folder.name, single)]
    numbered = sorted(folder.glob("groundtruth_rect.*.txt"), key=lambda p: p.name)
    found = [(f"{folder.name}-{p.name.split('.')[1]}", p) for p in numbered if p.stat().st_size > 0]
    if not found:
        raise FileNotFoundError(
            f"sequence {folder.name}: no {_GROUNDTRUTH} (or groundtruth_rect.<k>.txt) in {folder}"
        )
    return found


def read_otb_sequence(folder: os.PathLike | str) -> List[TrackingSequence]:
    """Read one OTB sequence folder: one :class:`TrackingSequence` per annotated object (usually one).

    Raises:
        FileNotFoundError: the folder, its ``img/`` frames or its ground truth are missing.
        ValueError: naming the sequence (and line): an unreadable ground-truth line, a box without
            area, or more boxes than frames (or than frames from the sequence's first annotated one).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"sequence {folder.name}: folder {folder} not found")
    images = folder / "img"
    if not images.is_dir():
        raise FileNotFoundError(f"sequence {folder.name}: no img/ folder of frames in {folder} (OTB layout)")
    frames = find_frames(images)
    if not frames:
        raise FileNotFoundError(f"sequence {folder.name}: no image files in {images}")
    sequences = []
    for name, path in _groundtruth_files(folder):
        boxes = read_groundtruth(path, name)
        first = OTB_FIRST_FRAMES.get(folder.name, 1) - 1
        if first + boxes.shape[0] > len(frames):
            raise ValueError(
                f"sequence {name}: {path} has {boxes.shape[0]} boxes but {folder / 'img'} has "
                f"{len(frames)} frames"
                + (f" (annotated from frame {first + 1})" if first else "")
                + "; expected at most one box per frame"
            )
        sequences.append(TrackingSequence(name, frames[first : first + boxes.shape[0]], boxes))
    return sequences


def read_otb_root(root: os.PathLike | str, names: Optional[Sequence[str]] = None) -> List[TrackingSequence]:
    """Every OTB sequence under ``root`` (each sub-folder holding ``img/``), sorted by folder name; or only
    the folders ``names``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"OTB root {root} not found")
    folders = sorted(p for p in root.iterdir() if (p / "img").is_dir())
    if names is not None:
        available = {p.name for p in folders}
        missing = sorted(set(names) - available)
        if missing:
            raise ValueError(
                f"sequence(s) {missing} not found under {root} (an OTB sequence folder holds img/)"
            )
        folders = [p for p in folders if p.name in set(names)]
    if not folders:
        raise FileNotFoundError(f"{root} holds no OTB sequence (a folder with img/ and groundtruth_rect.txt)")
    return [sequence for folder in folders for sequence in read_otb_sequence(folder)]
