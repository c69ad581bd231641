"""``coco``: MS COCO object detection (instances JSON + image folders), read with
``torchvision.datasets.CocoDetection`` (pycocotools).

Layout read (paths relative to ``root``; the defaults are COCO 2017's)::

    train2017/<file_name>                       images
    val2017/<file_name>
    annotations/instances_train2017.json        COCO "instances" annotations
    annotations/instances_val2017.json

COCO cannot be downloaded through torchvision: get the images and the annotations from
https://cocodataset.org/#download and extract them under ``root``.

Target conversion (COCO annotation -> detection target):

* ``bbox`` ``[x, y, w, h]`` (continuous pixel coordinates) -> ``(x, y, x + w, y + h)``, clipped to the
  image; annotations with ``w <= 0`` or ``h <= 0``, or empty after clipping, are dropped.
* category ids -> contiguous labels ``1..K`` in increasing category id order (COCO's 80 ids run
  1..90 with gaps); ``class_names = ["background", *category names in that order]`` and
  ``label_to_category_id`` maps back (for writing COCO-format results).
* crowd regions (``iscrowd = 1``): left out of training targets (as torchvision's references do);
  evaluation targets keep them with ``iscrowd`` and ``difficult`` True, so the VOC-style metric
  ignores detections on them instead of counting crowds as missed objects.
* images without (kept) annotations stay in every split, with ``boxes`` of shape ``[0, 4]``.

Samples and batches: see :mod:`dcn.datamodules.detection.base`; COCO targets also carry
``iscrowd``. ``image_id`` is the index in the dataset; :meth:`CocoDetDataset.coco_image_id` gives
COCO's id.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from torch import Tensor
from torch.utils.data import Dataset

from dcn.datamodules.detection.base import (
    DetectionLoaders,
    RandomHorizontalFlip,
    Target,
    make_target,
    pil_to_float_tensor,
)
from dcn.images import read_image

__all__ = ["CocoDetDataModule", "CocoDetDataset", "coco_annotations_to_target"]

COCO_DOWNLOAD_URL = "https://cocodataset.org/#download"


def coco_annotations_to_target(
    annotations: List[dict],
    width: int,
    height: int,
    category_to_label: Dict[int, int],
    image_id: int,
    keep_crowd: bool,
    source: str = "annotations",
) -> Target:
    """The detection target of one image from its COCO annotation dicts (conversion rules: see the
    module docstring). ``source`` names the annotation file in errors (an unknown category id)."""
    boxes, labels, crowd = [], [], []
    for ann in annotations:
        is_crowd = bool(ann.get("iscrowd", 0))
        if is_crowd and not keep_crowd:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            continue
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x2 <= x1 or y2 <= y1:  # entirely outside the image
            continue
        category = ann["category_id"]
        if category not in category_to_label:
            raise ValueError(
                f"{source}: annotation {ann.get('id')} has category id {category}, not among the "
                f"categories {sorted(category_to_label)}"
            )
        boxes.append((x1, y1, x2, y2))
        labels.append(category_to_label[category])
        crowd.append(is_crowd)
    return make_target(boxes, labels, difficult=crowd, image_id=image_id, iscrowd=crowd)


class CocoDetDataset(Dataset):
    """Detection samples from a ``torchvision.datasets.CocoDetection``.

    Args:
        images: the image folder.
        annotations: the instances JSON file.
        category_to_label: COCO category id -> label (1..K).
        keep_crowd: keep crowd annotations (flagged ``iscrowd``/``difficult``); False drops them.
        transform: ``(image, target) -> (image, target)``; None: none.

    ``self.coco`` is the pycocotools ``COCO`` object (for COCOeval).
    """

    def __init__(
        self,
        images: os.PathLike | str,
        annotations: os.PathLike | str,
        category_to_label: Dict[int, int],
        keep_crowd: bool,
        transform: Optional[Callable[[Tensor, Target], Tuple[Tensor, Target]]] = None,
    ) -> None:
        from torchvision.datasets import CocoDetection

        class _CocoDetection(CocoDetection):
            def _load_image(self, id: int):  # dcn's reader: a bad file fails with its name
                return read_image(os.path.join(self.root, self.coco.loadImgs(id)[0]["file_name"]))

        self.annotations = Path(annotations)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading progress
            self.dataset = _CocoDetection(str(images), str(annotations))
        self.coco = self.dataset.coco
        categories = sorted(self.coco.cats)
        if categories != sorted(category_to_label):
            raise ValueError(
                f"{annotations}: categories {categories} differ from those the labels were built from "
                f"{sorted(category_to_label)}"
            )
        self.category_to_label = dict(category_to_label)
        self.keep_crowd = keep_crowd
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def coco_image_id(self, index: int) -> int:
        """COCO's ``image_id`` of sample ``index``."""
        return int(self.dataset.ids[index])

    def __getitem__(self, index: int) -> Tuple[Tensor, Target]:
        pil, annotations = self.dataset[index]
        info = self.coco.imgs[self.dataset.ids[index]]
        width, height = pil.size
        if (info.get("width"), info.get("height")) not in ((width, height), (None, None)):
            raise ValueError(
                f"{Path(self.dataset.root) / info['file_name']}: image is {width}x{height} but "
                f"{self.annotations} says {info.get('width')}x{info.get('height')}"
            )
        image = pil_to_float_tensor(pil)
        target = coco_annotations_to_target(
            annotations, width, height, self.category_to_label, index, self.keep_crowd, str(self.annotations)
        )
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


class CocoDetDataModule(DetectionLoaders):
    """MS COCO detection (layout and target conversion: see the module docstring).

    Args:
        root: the COCO folder; the other paths are relative to it.
        train_images, train_annotations: training image folder and instances JSON.
        val_images, val_annotations: validation pair.
        test_images, test_annotations: test pair; both None = the validation pair (COCO's test-dev
            labels are not public).
        flip: random horizontal flip (p = 0.5) in training.
        batch_size, val_batch_size: images per training / evaluation batch.
        num_workers, pin_memory: DataLoader options (workers persist between epochs when > 0).

    ``class_names``, ``num_classes``, ``label_to_category_id`` come from the validation annotation
    file's categories (read on first access: ``train.py`` needs ``num_classes`` before ``setup``);
    every split must have the same categories. ``in_channels`` is 3.
    """

    def __init__(
        self,
        root: os.PathLike | str,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        test_images: Optional[str] = None,
        test_annotations: Optional[str] = None,
        flip: bool = True,
        batch_size: int = 2,
        val_batch_size: int = 2,
        num_workers: int = 4,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.set_loader_options(batch_size, val_batch_size, num_workers, pin_memory)
        if (test_images is None) != (test_annotations is None):
            raise ValueError(
                "data.test_images and data.test_annotations: set both, or neither (the validation pair), got "
                f"{test_images!r} and {test_annotations!r}"
            )
        self.root = Path(root)
        if test_images is None:
            test_images, test_annotations = val_images, val_annotations
        self.paths: Dict[str, Tuple[Path, Path]] = {
            "train": (self.root / train_images, self.root / train_annotations),
            "val": (self.root / val_images, self.root / val_annotations),
            "test": (self.root / test_images, self.root / test_annotations),
        }
        self.flip = flip
        self.in_channels: int = 3
        self.train_dataset: Optional[CocoDetDataset] = None
        self.val_dataset: Optional[CocoDetDataset] = None
        self.test_dataset: Optional[CocoDetDataset] = None
        self._categories: Optional[List[Tuple[int, str]]] = None

    # Classes, from the validation annotations' categories (sorted by id).
    def _category_list(self) -> List[Tuple[int, str]]:
        if self._categories is None:
            path = self.paths["val"][1]
            self._check_file(path, "data.val_annotations")
            with open(path) as f:
                categories = json.load(f).get("categories") or []
            if not categories:
                raise ValueError(f"{path} lists no categories")
            self._categories = sorted((int(c["id"]), str(c["name"])) for c in categories)
        return self._categories

    @property
    def class_names(self) -> List[str]:
        return ["background", *(name for _, name in self._category_list())]

    @property
    def num_classes(self) -> int:
        return len(self._category_list()) + 1

    @property
    def label_to_category_id(self) -> Dict[int, int]:
        """Label (1..K) -> COCO category id."""
        return {label: cid for label, (cid, _) in enumerate(self._category_list(), start=1)}

    @property
    def category_id_to_label(self) -> Dict[int, int]:
        return {cid: label for label, cid in self.label_to_category_id.items()}

    def _check_file(self, path: Path, key: str) -> None:
        if not path.exists():
            raise FileNotFoundError(
                f"COCO file not found: {path} ({key}, relative to data.root={str(self.root)!r}). "
                "COCO cannot be downloaded through torchvision: get the images and annotations from "
                f"{COCO_DOWNLOAD_URL} and extract them under data.root"
            )

    def _check_layout(self, stages: Tuple[str, ...] = ("train", "val", "test")) -> None:
        for stage in stages:
            images, annotations = self.paths[stage]
            self._check_file(images, f"data.{stage}_images")
            self._check_file(annotations, f"data.{stage}_annotations")

    def prepare_data(self) -> None:
        self._check_layout()

    def setup(self, stage: Optional[str] = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        stages = (
            wanted.get(stage, ("train", "val", "test")) if stage is not None else ("train", "val", "test")
        )
        self._check_layout(stages)
        for s in stages:
            if getattr(self, f"{s}_dataset") is None:
                setattr(self, f"{s}_dataset", self._dataset(s))

    def _dataset(self, stage: str) -> CocoDetDataset:
        images, annotations = self.paths[stage]
        if stage == "train":
            transform = RandomHorizontalFlip(0.5) if self.flip else None
            return CocoDetDataset(
                images, annotations, self.category_id_to_label, keep_crowd=False, transform=transform
            )
        # val and test share a dataset object when they are the same pair (the default).
        other = {"val": "test", "test": "val"}[stage]
        if self.paths[other] == self.paths[stage] and getattr(self, f"{other}_dataset") is not None:
            return getattr(self, f"{other}_dataset")
        return CocoDetDataset(images, annotations, self.category_id_to_label, keep_crowd=True)
