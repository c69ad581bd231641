"""Train a Siamese tracker on a detection dataset, test it on tracking sequences.

SiamRPN and its successors train on still-image detection data (ImageNet DET, COCO) besides video: every
annotated object becomes a "sequence" of one frame, and a training pair is a template crop and a search
crop of that one object in that one image, the search window shifted and rescaled at random
(:mod:`dcn.datamodules.tracking.pairs`: ``data.pairs.shift`` and ``data.pairs.scale``), so the network
learns to find the template's object at another position and size. Negative pairs take the search crop
from another object (another image, or another instance in the same image).

:func:`detection_objects` turns any dcn detection dataset into such one-frame sequences without decoding
its images: VOC-layout datasets (``voc_det``, ``synthetic_det``: ``image_path(i)`` and ``annotation(i)``)
and COCO (``coco``). Difficult and crowd objects are left out, and so are objects smaller than
``min_box_size`` pixels along a side (a template of a few pixels teaches nothing).

:class:`DetectionPairsDataModule` trains on the detection datamodule's train split, validates on pairs of
its val split (fixed), and tests by tracking the sequences of ``test_root``: a VOT-layout root
(``list.txt``), an OTB-layout root (``<seq>/img/`` + ``groundtruth_rect.txt``) or a GOT-10k split folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from dcn.datamodules.tracking.base import TrackingDataModule
from dcn.datamodules.tracking.got10k import read_got10k_sequence
from dcn.datamodules.tracking.otb import read_otb_root
from dcn.datamodules.tracking.sequence import TrackingSequence
from dcn.datamodules.tracking.vot import read_vot_root, sequence_names

__all__ = ["TEST_LAYOUTS", "DetectionPairsDataModule", "detection_objects", "read_tracking_root"]

TEST_LAYOUTS = ("auto", "vot", "otb", "got10k")


def detection_objects(
    dataset: Dataset, min_box_size: float = 8.0, prefix: str = ""
) -> List[TrackingSequence]:
    """One single-frame :class:`TrackingSequence` per usable object of a detection ``dataset``.

    Args:
        dataset: a VOC-layout dataset (``image_path(i)``, ``annotation(i)`` with ``boxes`` xyxy and
            ``difficult``) or a COCO one (``coco``, ``dataset.root``, ``dataset.ids``), or a
            ``torch.utils.data.ConcatDataset`` of them.
        min_box_size: objects narrower or shorter than this (pixels) are left out.
        prefix: prepended to the sequence names (``"<prefix><image stem>#<k>"``).

    Raises:
        TypeError: a dataset of another kind (its images would have to be decoded to find the boxes).
        ValueError: no object is left.
    """
    objects: List[TrackingSequence] = []
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        for part in dataset.datasets:
            objects += _objects(part, min_box_size, prefix)
    else:
        objects = _objects(dataset, min_box_size, prefix)
    if not objects:
        raise ValueError(
            f"no object of at least {min_box_size} pixels per side in the detection dataset "
            f"({type(dataset).__name__}, {len(dataset)} images)"
        )
    return objects


def _objects(dataset: Any, min_box_size: float, prefix: str) -> List[TrackingSequence]:
    if hasattr(dataset, "image_path") and hasattr(dataset, "annotation"):
        items = []
        for index in range(len(dataset)):
            annotation = dataset.annotation(index)
            items.append((Path(dataset.image_path(index)), annotation.boxes, ~annotation.difficult))
        return _sequences(items, min_box_size, prefix, xywh=False)
    if hasattr(dataset, "coco") and hasattr(dataset, "dataset"):
        coco, root = dataset.coco, Path(dataset.dataset.root)
        items = []
        for image_id in dataset.dataset.ids:
            info = coco.imgs[image_id]
            annotations = coco.imgToAnns.get(image_id, [])
            boxes = [a["bbox"] for a in annotations]
            keep = [not a.get("iscrowd", 0) for a in annotations]
            items.append((root / info["file_name"], boxes, keep))
        return _sequences(items, min_box_size, prefix, xywh=True)
    raise TypeError(
        f"cannot list the objects of a {type(dataset).__name__} without decoding its images: a detection "
        "dataset for tracking pairs needs image_path(i) and annotation(i) (VOC layout) or a pycocotools coco "
        "(COCO)"
    )


def _sequences(items, min_box_size: float, prefix: str, xywh: bool) -> List[TrackingSequence]:
    sequences = []
    for path, boxes, keep in items:
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if not xywh:
            boxes = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        for k, (box, usable) in enumerate(zip(boxes, keep)):
            if bool(usable) and float(box[2]) >= min_box_size and float(box[3]) >= min_box_size:
                sequences.append(TrackingSequence(f"{prefix}{path.stem}#{k}", [path], box[None]))
    return sequences


def read_tracking_root(
    root: os.PathLike | str, layout: str = "auto", names: Optional[Sequence[str]] = None
) -> List[TrackingSequence]:
    """The sequences of a tracking root in ``layout`` (``auto``: ``list.txt`` with sequence folders holding
    ``groundtruth.txt`` -> VOT or GOT-10k (``absence.label`` read when present); otherwise OTB); only
    ``names`` when given (folder names)."""
    root = Path(root)
    if layout not in TEST_LAYOUTS:
        raise ValueError(f"data.test_layout must be one of {list(TEST_LAYOUTS)}, got {layout!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"tracking data folder {root} not found (data.test_root)")
    if layout == "auto":
        layout = "vot" if (root / "list.txt").is_file() else "otb"
    if layout == "otb":
        return read_otb_root(root, names)
    if layout == "vot":
        return read_vot_root(root, names)
    return [read_got10k_sequence(root / name) for name in sequence_names(root, names)]


class DetectionPairsDataModule(TrackingDataModule):
    """Tracking pairs from a detection dataset for training and validation; tracking sequences for testing.

    Args:
        detection: a dcn detection datamodule (e.g. ``VOCDetDataModule``; Hydra builds it from
            ``data.detection``); its train split gives the training pairs, its val split the validation pairs.
        test_root: the tracking sequences to test on (VOT, OTB or GOT-10k layout).
        test_layout: ``auto`` | ``vot`` | ``otb`` | ``got10k`` (see :func:`read_tracking_root`).
        test_sequences: test only these sequence folders (None: all).
        min_box_size: smallest object side (pixels) that becomes a training "sequence".
        **kwargs: pair sampling and loader settings of :class:`TrackingDataModule` (``data.pairs``, ...).
    """

    def __init__(
        self,
        detection: Any,
        test_root: os.PathLike | str,
        test_layout: str = "auto",
        test_sequences: Optional[Sequence[str]] = None,
        min_box_size: float = 8.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not all(hasattr(detection, a) for a in ("setup", "train_dataset", "val_dataset")):
            raise TypeError(
                f"data.detection must be a detection datamodule (with setup(), train_dataset and "
                f"val_dataset), got {type(detection).__name__}"
            )
        if test_layout not in TEST_LAYOUTS:
            raise ValueError(f"data.test_layout must be one of {list(TEST_LAYOUTS)}, got {test_layout!r}")
        if not min_box_size > 0:
            raise ValueError(f"data.min_box_size must be positive, got {min_box_size}")
        self.detection = detection
        self.test_root = Path(test_root)
        self.test_layout = test_layout
        self.test_names = list(test_sequences) if test_sequences is not None else None
        self.min_box_size = float(min_box_size)

    def prepare_data(self) -> None:
        self.detection.prepare_data()

    def load_split(self, split: str) -> List[TrackingSequence]:
        if split == "test":
            return read_tracking_root(self.test_root, self.test_layout, self.test_names)
        dataset = getattr(self.detection, f"{split}_dataset")
        if dataset is None:
            self.detection.setup("fit")
            dataset = getattr(self.detection, f"{split}_dataset")
        return detection_objects(dataset, self.min_box_size)
