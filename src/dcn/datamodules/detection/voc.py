"""``voc_det``: PASCAL VOC 2007/2012 object detection, or any dataset in VOC's detection layout.

Layout read (``root`` holds ``VOCdevkit/VOC<year>/``, or is itself such a folder — then every year
reads that one folder)::

    JPEGImages/<id>.jpg                 RGB images
    Annotations/<id>.xml                one VOC XML annotation per image
    ImageSets/Main/<split>.txt          one <id> per line (train.txt, val.txt, trainval.txt, test.txt)

A set is ``"<year>/<split>"``; several are concatenated into one dataset (VOC "07+12" training is
``["2007/trainval", "2012/trainval"]``, evaluated on ``"2007/test"``).

Coordinates: VOC's ``xmin, ymin, xmax, ymax`` are 1-based, inclusive pixel indices. They become the
continuous coordinates ``(xmin - 1, ymin - 1, xmax, ymax)`` (detectron2's convention): a box covering
pixel columns 1..3 of VOC (the first three) spans ``x`` in ``[0, 3]``.

Bad input, policy of :func:`parse_voc_xml`:

* malformed XML, an object without ``<name>``, ``<bndbox>`` or one of its four coordinates, a
  non-numeric (or non-finite) coordinate or flag: ``ValueError`` naming the file (and the object index).
* a class name not in ``class_names``: ``ValueError`` naming the file, the name and the known classes
  (for your own dataset set ``data.class_names``).
* a missing ``<size>`` (or its ``<width>``/``<height>``): the size is read from the image header
  (PIL, no decoding) of ``image_path`` (default ``<xml folder>/../JPEGImages/<xml stem>.jpg``);
  ``ValueError`` if that image does not exist either. A width or height ``<= 0``: ``ValueError``.
* boxes partly outside the image are clipped to ``[0, W] x [0, H]``; boxes left with ``x2 <= x1`` or
  ``y2 <= y1`` are dropped with a ``UserWarning`` naming the file and the box (a few real VOC boxes are
  degenerate; one bad box should not discard a 16k-image training set).
* a missing ``<difficult>`` or ``<truncated>`` counts as 0.

:class:`VOCDetDataset` additionally checks, on every read, that the image's size equals the XML's.

Samples and batches: see :mod:`dcn.datamodules.detection.base` — ``(image float32 [3, H, W] in
[0, 1], target {"boxes" float32 [K, 4] xyxy, "labels" int64 [K] in 1..num_classes-1, "difficult" bool
[K], "image_id" int})``, collated into ``(List[Tensor], List[dict])``.
"""

from __future__ import annotations

import math
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from dcn.datamodules.detection.base import (
    DetectionLoaders,
    RandomHorizontalFlip,
    Target,
    make_target,
    pil_to_float_tensor,
)
from dcn.datamodules.voc.layout import VOC_OBJECT_CLASSES, resolve_voc_dir
from dcn.images import read_image

__all__ = [
    "VOC_DET_CLASSES",
    "VOCAnnotation",
    "VOCDetDataModule",
    "VOCDetDataset",
    "load_voc_split",
    "parse_voc_xml",
    "read_main_split",
]

VOC_DET_CLASSES = VOC_OBJECT_CLASSES

_MAIN_DIR = Path("ImageSets") / "Main"
_COORDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class VOCAnnotation:
    """One parsed VOC XML file.

    Attributes:
        filename: the ``<filename>`` entry (``<xml stem>.jpg`` if absent); informational only, the
            dataset finds images by id.
        width, height: image size in pixels.
        boxes: ``float32[K, 4]`` continuous ``(x1, y1, x2, y2)``, clipped to the image, non-degenerate.
        labels: ``int64[K]``, index in ``class_names`` + 1 (0 is the background).
        difficult, truncated: ``bool[K]``.
        path: the XML file it was read from (for error messages).
    """

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    truncated: np.ndarray
    path: Optional[Path] = None


def parse_voc_xml(
    path: os.PathLike | str,
    class_names: Sequence[str],
    image_path: Optional[os.PathLike | str] = None,
) -> VOCAnnotation:
    """Parse one VOC XML annotation (policy for bad input: see the module docstring).

    Args:
        path: the ``Annotations/<id>.xml`` file.
        class_names: the object classes, background excluded; label = index + 1.
        image_path: where to read the size from when the XML has no ``<size>``; None =
            ``<xml folder>/../JPEGImages/<xml stem>.jpg``.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{path}: malformed XML ({error})") from error
    except OSError as error:
        raise FileNotFoundError(f"annotation file {path} cannot be read ({error})") from error
    filename = (root.findtext("filename") or "").strip() or f"{path.stem}.jpg"
    width, height = _image_size(root, path, image_path)

    names = list(class_names)
    index = {name: k for k, name in enumerate(names)}
    boxes, labels, difficult, truncated = [], [], [], []
    for k, obj in enumerate(root.findall("object")):
        where = f"{path}: object {k}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"{where} has no <name>")
        if name not in index:
            raise ValueError(
                f"{where}: unknown class {name!r}; known classes: {names}. For your own dataset set "
                "data.class_names to its object classes (background excluded)"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{where} ({name!r}) has no <bndbox>")
        coords = []
        for tag in _COORDS:
            text = bndbox.findtext(tag)
            if text is None or not text.strip():
                raise ValueError(f"{where} ({name!r}): <bndbox> has no <{tag}>")
            coords.append(_number(text, f"{where} ({name!r}): <{tag}>"))
        xmin, ymin, xmax, ymax = coords
        # 1-based inclusive pixel indices -> continuous coordinates, then clipped to the image.
        box = (
            min(max(xmin - 1.0, 0.0), width),
            min(max(ymin - 1.0, 0.0), height),
            min(max(xmax, 0.0), width),
            min(max(ymax, 0.0), height),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            warnings.warn(
                f"{where} ({name!r}): box (xmin, ymin, xmax, ymax) = {tuple(coords)} is empty inside the "
                f"{width}x{height} image; dropped",
                stacklevel=2,
            )
            continue
        boxes.append(box)
        labels.append(index[name] + 1)
        difficult.append(_flag(obj, "difficult", where))
        truncated.append(_flag(obj, "truncated", where))
    return VOCAnnotation(
        filename=filename,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        truncated=np.asarray(truncated, dtype=bool),
        path=path,
    )


def _number(text: str, where: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{where} is not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where} is not finite: {text.strip()!r}")
    return value


def _flag(obj: ET.Element, tag: str, where: str) -> bool:
    text = obj.findtext(tag)
    if text is None or not text.strip():
        return False  # VOC practice: absent means 0
    return _number(text, f"{where}: <{tag}>") != 0


def _image_size(root: ET.Element, path: Path, image_path: Optional[os.PathLike | str]) -> Tuple[int, int]:
    """``(width, height)`` from ``<size>``, or from the image header when ``<size>`` is incomplete."""
    size = root.find("size")
    width_text = size.findtext("width") if size is not None else None
    height_text = size.findtext("height") if size is not None else None
    if width_text is not None and width_text.strip() and height_text is not None and height_text.strip():
        width = _number(width_text, f"{path}: <size><width>")
        height = _number(height_text, f"{path}: <size><height>")
        if width != int(width) or height != int(height):
            raise ValueError(f"{path}: <size> must hold whole pixels, got {width}x{height}")
        width, height = int(width), int(height)
    else:
        image = (
            Path(image_path)
            if image_path is not None
            else path.parent.parent / "JPEGImages" / f"{path.stem}.jpg"
        )
        if not image.is_file():
            raise ValueError(
                f"{path}: no <size> with <width> and <height>, and no image {image} to read it from"
            )
        with Image.open(image) as pil:  # reads the header only
            width, height = pil.size
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: image size must be positive, got <width> {width} and <height> {height}")
    return width, height


def read_main_split(voc_dir: Path, split: str) -> List[str]:
    """Image ids listed in ``<voc_dir>/ImageSets/Main/<split>.txt`` (first token of each non-empty line)."""
    path = Path(voc_dir) / _MAIN_DIR / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def load_voc_split(voc_dir: Path, split: str, class_names: Sequence[str]) -> List[Tuple[Path, VOCAnnotation]]:
    """``(image path, annotation)`` for every id of ``ImageSets/Main/<split>.txt``; a listed image or XML
    that does not exist raises ``FileNotFoundError`` naming it."""
    voc_dir = Path(voc_dir)
    items = []
    for image_id in read_main_split(voc_dir, split):
        image = voc_dir / "JPEGImages" / f"{image_id}.jpg"
        xml = voc_dir / "Annotations" / f"{image_id}.xml"
        for file in (image, xml):
            if not file.is_file():
                raise FileNotFoundError(
                    f"{file} is listed in {voc_dir / _MAIN_DIR / f'{split}.txt'} but does not exist"
                )
        items.append((image, parse_voc_xml(xml, class_names, image_path=image)))
    return items


class VOCDetDataset(Dataset):
    """Detection samples (see :mod:`dcn.datamodules.detection.base`) from parsed VOC annotations.

    Args:
        items: ``(image path, VOCAnnotation)`` pairs (:func:`load_voc_split`); ``image_id`` in a target
            is the index in this list.
        use_difficult: False drops difficult objects from the targets (py-faster-rcnn's training default,
            ``USE_DIFF=False``); True keeps them with ``difficult`` set (evaluation: the VOC metric
            ignores them instead of counting them as misses).
        transform: ``(image, target) -> (image, target)``, e.g. :class:`RandomHorizontalFlip`; None: none.
    """

    def __init__(
        self,
        items: Sequence[Tuple[os.PathLike | str, VOCAnnotation]],
        use_difficult: bool = True,
        transform: Optional[Callable[[Tensor, Target], Tuple[Tensor, Target]]] = None,
    ) -> None:
        self.items = [(Path(image), annotation) for image, annotation in items]
        self.use_difficult = use_difficult
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def annotation(self, index: int) -> VOCAnnotation:
        """The parsed annotation of image ``index`` (all objects, difficult ones included)."""
        return self.items[index][1]

    def image_path(self, index: int) -> Path:
        return self.items[index][0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Target]:
        path, ann = self.items[index]
        pil = read_image(path)
        if pil.size != (ann.width, ann.height):
            # A mismatch means the boxes would be misplaced or clipped wrongly.
            raise ValueError(
                f"{path}: image is {pil.size[0]}x{pil.size[1]} (width x height) but its annotation "
                f"{ann.path} says {ann.width}x{ann.height}"
            )
        image = pil_to_float_tensor(pil)
        keep = np.ones(len(ann.labels), dtype=bool) if self.use_difficult else ~ann.difficult
        target = make_target(ann.boxes[keep], ann.labels[keep], ann.difficult[keep], index)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


class VOCDetDataModule(DetectionLoaders):
    """PASCAL VOC-layout object detection (layout and policies: see the module docstring).

    Args:
        root: folder holding ``VOCdevkit/VOC<year>/`` (or a VOC-layout folder itself).
        download: fetch every missing year/split via ``torchvision.datasets.VOCDetection`` into ``root``
            (VOC2007 trainval 439 MB, VOC2007 test 430 MB, VOC2012 trainval ~2 GB). Needs internet.
        train_sets, val_sets, test_sets: ``"<year>/<split>"`` sets, each list concatenated.
        class_names: the object classes, background excluded; None = VOC's 20 (:data:`VOC_DET_CLASSES`).
        use_difficult_in_training: keep difficult objects in training targets (evaluation always keeps
            them, flagged).
        flip: random horizontal flip (p = 0.5) in training.
        batch_size, val_batch_size: images per training / evaluation batch.
        num_workers, pin_memory: DataLoader options (workers persist between epochs when > 0).

    Attributes read by ``train.py`` and the task: ``class_names`` (``["background", *classes]``, index ==
    label), ``num_classes`` (its length), ``in_channels`` (3); after :meth:`setup`, ``train_dataset``,
    ``val_dataset``, ``test_dataset`` (:class:`VOCDetDataset`).
    """

    def __init__(
        self,
        root: os.PathLike | str,
        download: bool = False,
        train_sets: Sequence[str] = ("2007/trainval", "2012/trainval"),
        val_sets: Sequence[str] = ("2007/test",),
        test_sets: Sequence[str] = ("2007/test",),
        class_names: Optional[Sequence[str]] = None,
        use_difficult_in_training: bool = False,
        flip: bool = True,
        batch_size: int = 2,
        val_batch_size: int = 2,
        num_workers: int = 4,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.set_loader_options(batch_size, val_batch_size, num_workers, pin_memory)
        self.root = Path(root)
        self.download = download
        self.sets: Dict[str, List[Tuple[str, str]]] = {
            "train": _parse_sets(train_sets, "data.train_sets"),
            "val": _parse_sets(val_sets, "data.val_sets"),
            "test": _parse_sets(test_sets, "data.test_sets"),
        }
        self.object_classes = _object_classes(class_names)
        self.class_names: List[str] = ["background", *self.object_classes]
        self.num_classes: int = len(self.class_names)
        self.in_channels: int = 3
        self.use_difficult_in_training = use_difficult_in_training
        self.flip = flip
        self.train_dataset: Optional[VOCDetDataset] = None
        self.val_dataset: Optional[VOCDetDataset] = None
        self.test_dataset: Optional[VOCDetDataset] = None
        self._parsed: Dict[Tuple[str, str], List[Tuple[Path, VOCAnnotation]]] = {}

    def voc_dir(self, year: str) -> Path:
        """The VOC-layout folder read for ``year``."""
        return resolve_voc_dir(self.root, year)

    def _all_sets(self) -> List[Tuple[str, str]]:
        unique: List[Tuple[str, str]] = []
        for sets in self.sets.values():
            unique += [s for s in sets if s not in unique]
        return unique

    def prepare_data(self) -> None:
        # One process per node downloads; setup() (every process) only reads.
        if self.download:
            from torchvision.datasets import VOCDetection

            for year, split in self._all_sets():
                if not (self.voc_dir(year) / _MAIN_DIR / f"{split}.txt").is_file():
                    VOCDetection(str(self.root), year=year, image_set=split, download=True)
        self._check_layout()

    def _check_layout(self) -> None:
        """``FileNotFoundError`` naming the first missing folder or split file of any configured set."""
        for year, split in self._all_sets():
            voc = self.voc_dir(year)
            for path in (voc, voc / "JPEGImages", voc / "Annotations", voc / _MAIN_DIR / f"{split}.txt"):
                if not path.exists():
                    raise FileNotFoundError(
                        f"VOC detection set '{year}/{split}' not found: missing {path} (data.root="
                        f"{str(self.root)!r}). Expected <root>/VOCdevkit/VOC{year}/{{JPEGImages, "
                        f"Annotations, ImageSets/Main/{split}.txt}}. Set data.download=true to fetch VOC "
                        "(needs internet; VOC2007 trainval 439 MB + test 430 MB, VOC2012 trainval ~2 GB), "
                        "or point data.root=... at the folder holding VOCdevkit/"
                    )

    def setup(self, stage: Optional[str] = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        stages = (
            wanted.get(stage, ("train", "val", "test")) if stage is not None else ("train", "val", "test")
        )
        if any(getattr(self, f"{s}_dataset") is None for s in stages):
            self._check_layout()
        for s in stages:
            if getattr(self, f"{s}_dataset") is None:
                setattr(self, f"{s}_dataset", self._dataset(s))

    def _items(self, year: str, split: str) -> List[Tuple[Path, VOCAnnotation]]:
        # Parsed once per set: val and test are both VOC2007 test by default.
        if (year, split) not in self._parsed:
            self._parsed[(year, split)] = load_voc_split(self.voc_dir(year), split, self.object_classes)
        return self._parsed[(year, split)]

    def _dataset(self, stage: str) -> VOCDetDataset:
        items = [item for year, split in self.sets[stage] for item in self._items(year, split)]
        if not items:
            raise ValueError(f"the {stage} sets {self._set_names(stage)} list no images")
        if stage == "train":
            transform = RandomHorizontalFlip(0.5) if self.flip else None
            return VOCDetDataset(items, use_difficult=self.use_difficult_in_training, transform=transform)
        return VOCDetDataset(items, use_difficult=True)

    def _set_names(self, stage: str) -> List[str]:
        return [f"{year}/{split}" for year, split in self.sets[stage]]


def _parse_sets(sets: Sequence[str] | str, key: str) -> List[Tuple[str, str]]:
    """``["2007/trainval", ...] -> [("2007", "trainval"), ...]``; a single string counts as one set."""
    if isinstance(sets, str):
        sets = [sets]
    parsed = []
    for entry in sets:
        parts = str(entry).strip().split("/")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ValueError(f"{key}: each set is '<year>/<split>' (e.g. '2007/trainval'), got {entry!r}")
        parsed.append((parts[0].strip(), parts[1].strip()))
    if not parsed:
        raise ValueError(f"{key} lists no sets; give at least one '<year>/<split>'")
    return parsed


def _object_classes(class_names: Optional[Sequence[str]]) -> List[str]:
    if class_names is None:
        return list(VOC_DET_CLASSES)
    if isinstance(class_names, str):
        raise TypeError(f"data.class_names must be a list of names, got the string {class_names!r}")
    names = [str(n).strip() for n in class_names]
    if not names:
        raise ValueError("data.class_names is empty; list the object classes (background excluded)")
    if len(set(names)) != len(names):
        raise ValueError(f"data.class_names has duplicates: {names}")
    if any(n.lower() in ("background", "__background__") for n in names):
        raise ValueError(
            f"data.class_names lists object classes only (the background, label 0, is added): {names}"
        )
    return names
