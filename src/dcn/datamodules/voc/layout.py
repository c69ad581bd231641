"""The Pascal VOC on-disk layout, shared by the VOC segmentation and detection datamodules."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["VOC_OBJECT_CLASSES", "resolve_voc_dir"]

# The 20 object classes of Pascal VOC, in the official order (segmentation adds "background" first).
VOC_OBJECT_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def resolve_voc_dir(root: os.PathLike | str, year: str = "2012") -> Path:
    """The VOC-layout folder for ``root``: ``root`` itself when it holds ``JPEGImages/``, else
    ``root/VOCdevkit/VOC<year>`` (torchvision's layout; that path is returned even if missing)."""
    root = Path(root)
    if (root / "JPEGImages").is_dir():
        return root
    return root / "VOCdevkit" / f"VOC{year}"
