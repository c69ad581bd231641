"""``mnist``: torchvision's MNIST under the same random geometric deformation as ``digits``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import torch.nn.functional as F
from torchvision.datasets import MNIST

from dcn.datamodules.classification.base import ClassificationDataModule, DeformedDigits
from dcn.datamodules.classification.deformation import GeometricDeformation
from dcn.datamodules.classification.splits import stratified_split

__all__ = ["MNISTDataModule"]

_MNIST_SIZE = 28


def _raw_files() -> List[str]:
    """The uncompressed file names torchvision's MNIST reads from ``<root>/MNIST/raw``."""
    return [os.path.splitext(os.path.basename(name))[0] for name, _ in MNIST.resources]


class MNISTDataModule(DeformedDigits, ClassificationDataModule):
    """MNIST ("rotated/scaled MNIST" with a deformation), read by ``torchvision.datasets.MNIST``.

    The 60,000 training images are split (stratified, fixed by ``split_seed``) into ``val_size``
    validation images and the rest for training; the 10,000 official test images are the test set.
    Deformations follow :class:`~dcn.datamodules.classification.base.DeformedDigits`: re-drawn every
    read for training, fixed per sample by ``eval_seed`` for validation and test.

    Batches: ``(Tensor[B, 1, canvas_size, canvas_size] float32 in [0, 1], Tensor[B] int64)``.

    Args:
        root: directory holding ``MNIST/raw/`` (torchvision's layout).
        download: fetch the data into ``root`` when missing (needs internet).
        deformation, deform_eval, split_seed, eval_seed: as for ``digits``.
        canvas_size: side of the output images; images are zero-padded, centred, from 28 pixels
            (room for translation, or for backbones that need larger inputs).
        val_size: number of training images held out for validation.
        batch_size, num_workers, pin_memory: see :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        root: str,
        download: bool = False,
        deformation: Optional[GeometricDeformation] = None,
        deform_eval: bool = True,
        canvas_size: int = 28,
        val_size: int = 5000,
        split_seed: int = 0,
        eval_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if canvas_size < _MNIST_SIZE:
            raise ValueError(f"data.canvas_size must be >= {_MNIST_SIZE} (MNIST's size), got {canvas_size}")
        if val_size < 1:
            raise ValueError(f"data.val_size must be >= 1, got {val_size}")
        self.root, self.download = Path(root), download
        self.canvas_size, self.val_size = canvas_size, val_size
        self.set_deformation(deformation, deform_eval, split_seed, eval_seed)

    @property
    def raw_folder(self) -> Path:
        """Where torchvision's MNIST expects the four uncompressed idx files."""
        return self.root / "MNIST" / "raw"

    def prepare_data(self) -> None:
        # Runs on one process per node: the only place that downloads.
        if self.download:
            MNIST(str(self.root), train=True, download=True)
            MNIST(str(self.root), train=False, download=True)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        missing = [name for name in _raw_files() if not (self.raw_folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"MNIST not found under data.root={str(self.root)!r}: missing {', '.join(missing)} in "
                f"{self.raw_folder}. Set data.download=true to fetch it (needs internet), or copy the "
                "four uncompressed MNIST idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte) into {self.raw_folder}."
            )
        train = MNIST(str(self.root), train=True, download=False)
        test = MNIST(str(self.root), train=False, download=False)
        pad = self.canvas_size - _MNIST_SIZE
        padding = (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)
        train_images = F.pad(train.data.unsqueeze(1), padding)  # uint8 [N, 1, H, W]
        test_images = F.pad(test.data.unsqueeze(1), padding)

        train_idx, val_idx = stratified_split(train.targets.numpy(), (self.val_size,), self.split_seed)
        self.set_deformed_splits(
            (train_images[train_idx], train.targets[train_idx]),
            (train_images[val_idx], train.targets[val_idx]),
            (test_images, test.targets),
        )
