"""``voc_seg``: PASCAL VOC 2012 semantic segmentation, or any dataset in VOC's on-disk layout.

Layout read (``root`` holds ``VOCdevkit/VOC<year>/``, or is itself that folder)::

    JPEGImages/<id>.jpg                      RGB images
    SegmentationClass/<id>.png               class-index palette PNGs, 255 = ignore (object borders),
                                             or RGB pictures in the VOC colour map (``label_format``)
    ImageSets/Segmentation/<split>.txt       one <id> per line (train.txt, val.txt, ...)

Label files (``label_format``, :func:`dcn.datamodules.voc.label_png.read_label_image`): ``index`` reads
class-index images (palette 'P' or greyscale 'L' PNGs, as VOC ships them); ``rgb_palette`` decodes RGB
pictures through the VOC colour map of the class list (class k = ``voc_palette()[k]``, cream = 255 =
ignore), as many derived datasets save them; ``auto`` (default) chooses by each file's image mode. A
colour outside the map is an error naming the file, the colour and a pixel where it occurs.

With ``use_sbd`` the training set becomes VOC's "train_aug" (10,582 images for VOC 2012): VOC
``train`` plus every image of the Semantic Boundaries Dataset (Hariharan et al., 2011; layout
``<sbd_root>/{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}``, as torchvision's ``SBDataset``
downloads it) that is not in the VOC validation split. Images with a VOC PNG use it (VOC's labels
are finer and carry the 255 borders); the others use SBD's ``.mat`` labels.

Batches: ``(images Tensor[B, 3, H, W] float32 normalised, masks Tensor[B, H, W] int64)``; mask values
are class indices in ``[0, num_classes)`` or 255 (ignored by the loss and the metrics).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from dcn.datamodules.loaders import LoaderOptions
from dcn.datamodules.segmentation.transforms import (
    eval_transform,
    pad_collate,
    train_transform,
)
from dcn.datamodules.voc.label_png import LABEL_FORMATS, check_label_values, read_label_image
from dcn.datamodules.voc.layout import VOC_OBJECT_CLASSES, resolve_voc_dir
from dcn.images import IMAGENET_MEAN, IMAGENET_STD, read_image_array

__all__ = ["VOC_CLASSES", "VOCSegDataModule", "VOCSegDataset", "read_sbd_label"]

VOC_CLASSES = ("background",) + VOC_OBJECT_CLASSES

_SPLIT_DIR = Path("ImageSets") / "Segmentation"


def read_split(voc_dir: Path, split: str) -> List[str]:
    """Image ids listed in ``ImageSets/Segmentation/<split>.txt``."""
    path = voc_dir / _SPLIT_DIR / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (voc_dir / _SPLIT_DIR).glob("*.txt"))
        raise FileNotFoundError(f"split file {path} not found (available splits: {available or 'none'})")
    ids = [line.strip().split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split file {path} lists no images")
    return ids


def read_sbd_label(path: os.PathLike | str) -> np.ndarray:
    """The class-index map (``uint8[H, W]``) of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``)."""
    from scipy.io import loadmat

    mat = loadmat(str(path), squeeze_me=False)
    if "GTcls" not in mat:
        raise ValueError(f"{path}: not an SBD class label file (no 'GTcls' struct)")
    return np.asarray(mat["GTcls"][0]["Segmentation"][0], dtype=np.uint8)


class VOCSegDataset(Dataset):
    """``(image, mask)`` samples from lists of image and label files.

    Args:
        images: image file paths (anything PIL reads; converted to RGB).
        labels: label file paths, same length: class-index PNGs (``.png``) or SBD ``.mat`` files.
        num_classes: labels are checked to hold only ``0..num_classes-1`` and 255 on every read
            (a wrong class list fails loudly instead of training on garbage).
        transform: joint ``(Image, Mask) -> (image, mask)`` transform (see
            :mod:`dcn.datamodules.segmentation.transforms`); None returns ``uint8[3, H, W]`` and
            ``uint8[H, W]``.
        label_format: how PNG labels are read: ``auto`` | ``index`` | ``rgb_palette`` (module docstring).
    """

    def __init__(
        self,
        images: Sequence[Path],
        labels: Sequence[Path],
        num_classes: int,
        transform: Optional[Callable] = None,
        label_format: str = "auto",
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"data.label_format must be one of {list(LABEL_FORMATS)}, got {label_format!r}")
        self.label_format = label_format
        self.images = [Path(p) for p in images]
        self.labels = [Path(p) for p in labels]
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> Tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The untransformed sample: ``(Image uint8[3, H, W], Mask uint8[H, W])``."""
        image_path, label_path = self.images[index], self.labels[index]
        # PIL, not torchvision.io: torchvision 0.29 deprecates its image decoders.
        image = torch.from_numpy(read_image_array(image_path).copy()).permute(2, 0, 1).contiguous()
        if label_path.suffix == ".mat":
            label = read_sbd_label(label_path)
            check_label_values(label, self.num_classes, label_path)
        else:
            label = read_label_image(label_path, self.num_classes, self.label_format)
        if tuple(image.shape[-2:]) != label.shape:
            raise ValueError(
                f"{label_path}: label size {label.shape} differs from its image {image_path} "
                f"({tuple(image.shape[-2:])})"
            )
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(label))

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image, mask = self.read(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image.as_subclass(Tensor), mask.as_subclass(Tensor)


class VOCSegDataModule(LoaderOptions, L.LightningDataModule):
    """PASCAL VOC-layout semantic segmentation (see the module docstring for the layout).

    Args:
        root: folder holding ``VOCdevkit/VOC<year>/`` (or the VOC-layout folder itself).
        year: VOC year, for the ``VOC<year>`` folder name and the download.
        download: fetch VOC (``VOCtrainval_11-May-2012.tar``, ~2 GB, via torchvision) and, with
            ``use_sbd``, SBD (~1.4 GB) into ``root`` / ``sbd_root`` when missing. Needs internet.
        use_sbd: train on VOC train + SBD minus VOC val ("train_aug").
        sbd_root: SBD folder (``img/``, ``cls/``, ``train.txt``, ``val.txt``); None = ``<root>/SBD``.
        num_classes, class_names: the classes (index 0 first). Both None: VOC's 21. Only
            ``num_classes``: names ``class_0``..; only ``class_names``: their count. Both: must agree.
        label_format: ``auto`` | ``index`` | ``rgb_palette``: how label PNGs are read (module docstring).
        train_split, val_split, test_split: split file names under ``ImageSets/Segmentation``. VOC
            2012's test labels are not public, so testing uses ``val`` by default.
        crop_size: training crop (int or [h, w]); images smaller after scaling are padded (mean / 255).
        scale_range: training random scale range ([low, high], relative) or None.
        flip: random horizontal flip in training.
        val_crop_size: None evaluates full images; an int or [h, w] a fixed centre crop.
        mean, std: normalisation (ImageNet's by default: what pretrained backbones expect).
        batch_size: training batch size (>= 2: the ASPP image-pooling BatchNorm needs 2 samples).
        val_batch_size: evaluation batch size; full images of different sizes are padded to the
            largest (255 in masks, so padding never counts) — 1 evaluates each image exactly alone.
        num_workers, pin_memory: DataLoader options.
    """

    def __init__(
        self,
        root: os.PathLike | str,
        year: str = "2012",
        download: bool = False,
        use_sbd: bool = False,
        sbd_root: Optional[os.PathLike | str] = None,
        num_classes: Optional[int] = None,
        class_names: Optional[Sequence[str]] = None,
        label_format: str = "auto",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        crop_size: int | Sequence[int] = 513,
        scale_range: Optional[Sequence[float]] = (0.5, 2.0),
        flip: bool = True,
        val_crop_size: Optional[int | Sequence[int]] = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 2,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(
                f"data.batch_size must be >= 2 for training (BatchNorm after ASPP's image pooling sees one "
                f"value per channel and sample), got {batch_size}"
            )
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"data.mean and data.std need 3 values (RGB), got {list(mean)} and {list(std)}")
        self._class_names = _class_list(num_classes, class_names)
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"data.label_format must be one of {list(LABEL_FORMATS)}, got {label_format!r}")
        self.label_format = label_format
        self.root = Path(root)
        self.year = str(year)
        self.download = download
        self.use_sbd = use_sbd
        self.sbd_root = Path(sbd_root) if sbd_root is not None else self.root / "SBD"
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        # Built now so a bad crop size or scale range fails at construction, not in a worker.
        self.train_transform = train_transform(crop_size, scale_range, flip, self.mean, self.std)
        self.eval_transform = eval_transform(val_crop_size, self.mean, self.std)
        self.set_loader_options(batch_size, val_batch_size, num_workers, pin_memory, min_batch_size=2)
        self.train_set: Optional[VOCSegDataset] = None
        self.val_set: Optional[VOCSegDataset] = None
        self.test_set: Optional[VOCSegDataset] = None

    # The attributes train.py and the task read.
    @property
    def in_channels(self) -> int:
        return 3

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def class_names(self) -> List[str]:
        return list(self._class_names)

    @property
    def voc_dir(self) -> Path:
        """The VOC-layout folder this datamodule reads."""
        return resolve_voc_dir(self.root, self.year)

    def prepare_data(self) -> None:
        # One process per node downloads; setup() (every process) only reads.
        if not self.download:
            return
        from torchvision.datasets import SBDataset, VOCSegmentation

        if not (self.voc_dir / "JPEGImages").is_dir():
            VOCSegmentation(str(self.root), year=self.year, image_set="trainval", download=True)
        if self.use_sbd and not (self.sbd_root / "cls").is_dir():
            self.sbd_root.mkdir(parents=True, exist_ok=True)
            SBDataset(str(self.sbd_root), image_set="train", mode="segmentation", download=True)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self._check_layout()
        self.train_set = self._dataset("train", self.train_transform)
        self.val_set = self._dataset("val", self.eval_transform)
        self.test_set = self._dataset("test", self.eval_transform)

    def _check_layout(self) -> None:
        voc = self.voc_dir
        for folder in (voc, voc / "JPEGImages", voc / "SegmentationClass", voc / _SPLIT_DIR):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"VOC-layout dataset not found: missing folder {folder} (data.root={str(self.root)!r}, "
                    f"year={self.year!r}). Expected <root>/VOCdevkit/VOC{self.year}/{{JPEGImages, "
                    "SegmentationClass, ImageSets/Segmentation}. Set data.download=true to fetch VOC (needs "
                    "internet, ~2 GB), or point data.root at an extracted VOCtrainval_11-May-2012.tar"
                )
        if self.use_sbd:
            for path in (self.sbd_root / "img", self.sbd_root / "cls", self.sbd_root / "train.txt"):
                if not path.exists():
                    raise FileNotFoundError(
                        f"SBD not found: missing {path} (data.sbd_root={str(self.sbd_root)!r}). Set "
                        "data.download=true to fetch it (needs internet), or data.use_sbd=false"
                    )

    def _pairs(self, split: str) -> Tuple[List[Path], List[Path]]:
        voc = self.voc_dir
        ids = read_split(voc, split)
        images = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
        labels = [voc / "SegmentationClass" / f"{i}.png" for i in ids]
        return images, labels

    def _sbd_pairs(self, voc_train: List[str]) -> Tuple[List[Path], List[Path]]:
        """SBD images (train + val lists) that are neither in VOC train (added already) nor VOC val."""
        exclude = set(read_split(self.voc_dir, self.splits["val"])) | set(voc_train)
        ids: List[str] = []
        for name in ("train.txt", "val.txt"):
            path = self.sbd_root / name
            if path.is_file():
                ids += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        ids = sorted(set(ids) - exclude)
        voc = self.voc_dir
        images, labels = [], []
        for i in ids:
            png = voc / "SegmentationClass" / f"{i}.png"
            images.append(self.sbd_root / "img" / f"{i}.jpg")
            labels.append(png if png.is_file() else self.sbd_root / "cls" / f"{i}.mat")
        return images, labels

    def _dataset(self, stage: str, transform: Callable) -> VOCSegDataset:
        images, labels = self._pairs(self.splits[stage])
        if stage == "train" and self.use_sbd:
            extra_images, extra_labels = self._sbd_pairs([p.stem for p in images])
            images, labels = images + extra_images, labels + extra_labels
        for image, label in zip(images, labels):
            for path in (image, label):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{path} is listed in the {stage} split ({self.splits[stage]!r}) but does not exist"
                    )
        return VOCSegDataset(images, labels, self.num_classes, transform, self.label_format)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", self.val_batch_size, shuffle=False)

    def _loader(
        self, dataset: Optional[Dataset], stage: str, batch_size: int, shuffle: bool, drop_last: bool = False
    ) -> DataLoader:
        # drop_last in training: a last batch of one sample would break the ASPP pooling BatchNorm.
        drop_last = drop_last and dataset is not None and len(dataset) >= batch_size
        return self.split_loader(dataset, stage, batch_size, shuffle, drop_last, collate_fn=pad_collate)


def _class_list(num_classes: Optional[int], class_names: Optional[Sequence[str]]) -> List[str]:
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise TypeError(f"data.num_classes must be an integer, got {num_classes!r}")
    if class_names is None:
        if num_classes is None or num_classes == len(VOC_CLASSES):
            return list(VOC_CLASSES)
        names = [f"class_{k}" for k in range(num_classes)]
    else:
        names = [str(n) for n in class_names]
        if num_classes is not None and num_classes != len(names):
            raise ValueError(
                f"data.num_classes={num_classes} but data.class_names lists {len(names)} classes: {names}"
            )
    if not 2 <= len(names) <= 255:
        raise ValueError(f"segmentation needs 2..255 classes (255 is the ignore value), got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"data.class_names has duplicates: {names}")
    return names
