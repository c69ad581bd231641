"""Shared pieces of the detection datamodules (``voc_det``, ``coco``, ``synthetic_det``): the sample form,
its checks, the training flip, the collate function and the dataloaders (:class:`DetectionLoaders`).

A detection sample is ``(image, target)``:

* ``image``: float32 ``Tensor[3, H, W]`` in ``[0, 1]``, *not* normalised — torchvision's
  ``GeneralizedRCNNTransform`` inside Faster R-CNN normalises and resizes. Images of one batch may
  differ in size.
* ``target``: a dict with

  - ``boxes``: float32 ``Tensor[K, 4]``, ``(x1, y1, x2, y2)`` in continuous pixel coordinates: the
    image spans ``[0, W] x [0, H]`` and pixel ``(i, j)`` (row, column) covers ``[j, j + 1] x [i, i + 1]``.
    Every box satisfies ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H``.
  - ``labels``: int64 ``Tensor[K]`` in ``1 .. num_classes - 1`` (0 is the background).
  - ``difficult``: bool ``Tensor[K]`` (VOC's flag; the VOC metric ignores these objects).
  - ``image_id``: int, the index of the image in its dataset.
  - COCO only: ``iscrowd``: bool ``Tensor[K]`` (and ``difficult`` equals it).

  ``K = 0`` is allowed (``boxes`` of shape ``[0, 4]``): images without objects are kept.

A batch is ``(List[Tensor[3, H_i, W_i]], List[dict])`` (:func:`detection_collate`), the list-of-targets
form torchvision's detection models take; Lightning moves the tensors in it to the device as is.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from dcn.datamodules.loaders import LoaderOptions

__all__ = [
    "DetectionLoaders",
    "RandomHorizontalFlip",
    "check_target",
    "detection_collate",
    "horizontal_flip",
    "make_target",
    "pil_to_float_tensor",
]

Target = Dict[str, Any]


def pil_to_float_tensor(image: Image.Image) -> Tensor:
    """A PIL image as float32 ``Tensor[3, H, W]`` in ``[0, 1]`` (converted to RGB first)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def make_target(
    boxes: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    difficult: np.ndarray | Tensor,
    image_id: int,
    iscrowd: Optional[np.ndarray | Tensor] = None,
) -> Target:
    """The target dict of the module docstring from ``boxes [K, 4]``, ``labels [K]``, ``difficult [K]``
    (and ``iscrowd [K]`` for COCO), with the documented dtypes; ``K = 0`` gives ``boxes`` ``[0, 4]``."""
    target: Target = {
        "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        "difficult": torch.as_tensor(np.asarray(difficult, dtype=bool).reshape(-1)),
        "image_id": int(image_id),
    }
    if iscrowd is not None:
        target["iscrowd"] = torch.as_tensor(np.asarray(iscrowd, dtype=bool).reshape(-1))
    return target


def check_target(
    target: Target, image_size: Tuple[int, int], num_classes: int, source: str = "target"
) -> None:
    """Raise ``ValueError`` (naming ``source``) unless ``target`` has the documented form for an image of
    ``image_size = (H, W)`` and labels in ``1 .. num_classes - 1``."""
    height, width = image_size
    for key in ("boxes", "labels", "difficult", "image_id"):
        if key not in target:
            raise ValueError(f"{source}: target has no {key!r} (keys: {sorted(target)})")
    boxes, labels, difficult = target["boxes"], target["labels"], target["difficult"]
    if not (
        isinstance(boxes, Tensor)
        and boxes.dtype == torch.float32
        and boxes.dim() == 2
        and boxes.shape[1] == 4
    ):
        raise ValueError(f"{source}: boxes must be a float32 Tensor[K, 4], got {_describe(boxes)}")
    k = boxes.shape[0]
    if not (isinstance(labels, Tensor) and labels.dtype == torch.int64 and tuple(labels.shape) == (k,)):
        raise ValueError(f"{source}: labels must be an int64 Tensor[{k}], got {_describe(labels)}")
    if not (
        isinstance(difficult, Tensor) and difficult.dtype == torch.bool and tuple(difficult.shape) == (k,)
    ):
        raise ValueError(f"{source}: difficult must be a bool Tensor[{k}], got {_describe(difficult)}")
    if "iscrowd" in target:
        iscrowd = target["iscrowd"]
        if not (isinstance(iscrowd, Tensor) and iscrowd.dtype == torch.bool and tuple(iscrowd.shape) == (k,)):
            raise ValueError(f"{source}: iscrowd must be a bool Tensor[{k}], got {_describe(iscrowd)}")
    if not isinstance(target["image_id"], int):
        raise ValueError(f"{source}: image_id must be an int, got {target['image_id']!r}")
    if k == 0:
        return
    if labels.min() < 1 or labels.max() >= num_classes:
        raise ValueError(
            f"{source}: labels must lie in 1..{num_classes - 1} (0 is the background), got {labels.tolist()}"
        )
    x1, y1, x2, y2 = boxes.unbind(1)
    bad = (x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height) | (x2 <= x1) | (y2 <= y1)
    if bad.any():
        raise ValueError(
            f"{source}: boxes must satisfy 0 <= x1 < x2 <= W={width} and 0 <= y1 < y2 <= H={height}; "
            f"offending boxes: {boxes[bad].tolist()}"
        )


def horizontal_flip(image: Tensor, target: Target) -> Tuple[Tensor, Target]:
    """Mirror ``image [C, H, W]`` left-right and its ``target["boxes"] [K, 4]`` with it.

    In continuous coordinates the column range ``[x1, x2]`` of an image of width ``W`` maps to
    ``[W - x2, W - x1]``; flipping twice is the identity. Other target entries are copied unchanged.
    """
    flipped = dict(target)
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
    flipped["boxes"] = F.horizontal_flip(boxes).as_subclass(Tensor)
    return F.horizontal_flip(image), flipped


class RandomHorizontalFlip:
    """The training transform: :func:`horizontal_flip` with probability ``p``, else the sample unchanged.

    Draws from torch's global RNG (no generator of its own), which Lightning's
    ``seed_everything(workers=True)`` seeds in the main process and in every DataLoader worker.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must lie in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, target: Target) -> Tuple[Tensor, Target]:
        if torch.rand(()).item() < self.p:
            return horizontal_flip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


def detection_collate(batch: Sequence[Tuple[Tensor, Target]]) -> Tuple[List[Tensor], List[Target]]:
    """``[(image, target), ...] -> ([image, ...], [target, ...])``: no stacking, images keep their sizes."""
    images = [sample[0] for sample in batch]
    targets = [sample[1] for sample in batch]
    return images, targets


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} Tensor{list(value.shape)}"
    return type(value).__name__


class DetectionLoaders(LoaderOptions, L.LightningDataModule):
    """The train / val / test dataloaders every detection datamodule shares: ``train_dataset`` shuffled,
    the others in order, nothing dropped, batches collated by :func:`detection_collate`. Subclasses call
    :meth:`set_loader_options` in ``__init__`` and set ``train_dataset``, ``val_dataset`` and
    ``test_dataset`` in ``setup``."""

    train_dataset: Optional[Dataset] = None
    val_dataset: Optional[Dataset] = None
    test_dataset: Optional[Dataset] = None

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", self.val_batch_size, shuffle=False)

    def _loader(self, dataset: Optional[Dataset], stage: str, batch_size: int, shuffle: bool) -> DataLoader:
        return self.split_loader(dataset, stage, batch_size, shuffle, collate_fn=detection_collate)
