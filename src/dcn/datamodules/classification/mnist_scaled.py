"""``mnist_scaled``: the scaled-MNIST protocol on the official MNIST test file, split into train / val / test.

The protocol (developer0hye/PyTorch-Deformable-Convolution-v2; Dai et al.'s "scale" argument for DCN): train
on MNIST digits as they are, with no augmentation, then test on the same kind of digits shrunk or enlarged
by a factor ``s`` in ``scales`` (x0.5, x0.6, ..., x1.5 by default; x1.0 is the unscaled test set). A network
whose receptive field adapts to the object should lose less accuracy away from x1.0.

Data: only the 10,000 images of the official test file (``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, gzip-compressed or not) are read, from ``<root>/MNIST/raw/`` (torchvision's
layout). They are split once, stratified by class and fixed by ``split_seed`` (independent of the training
seed): first ``test_size`` test images are drawn from all 10,000, then ``val_size`` validation images
from the rest; what is left trains. Defaults: 2,000 test, 1,000 validation, 7,000 training images (the
8,000 / 2,000 train / test split of the protocol, with the validation set taken out of the 8,000 for
checkpoint selection). Validation images are unscaled, like the training images: nothing about the test
scales is used to train or to choose a checkpoint.

Scaling (test only, once in :meth:`setup`): every test image is resampled by
``torchvision.transforms.v2.functional.affine(image, angle=0, translate=[0, 0], scale=s, shear=[0, 0],
interpolation=interpolation, fill=0)`` on the raw ``uint8`` 28x28 canvas, i.e. about the image centre, the
canvas size kept: a x0.5 digit occupies the central half of the canvas with black around it, a x1.5 digit
is cropped at the canvas border. This is the published scaling (same function and centre, and its default
nearest-neighbour interpolation), with one difference: the published code scales the *normalised* image
with fill 0, which paints the uncovered border of a shrunk digit grey (raw value 0.1307); here the raw
image is scaled with black fill, then normalised, so every background pixel has the same value.

Normalisation (``normalize``): ``(x - mean) / std`` with MNIST's ``mean=0.1307``, ``std=0.3081``, as
published; off: images in [0, 1].

Batches: ``(Tensor[B, 1, 28, 28] float32, Tensor[B] int64)``. The test stage has one dataloader per scale,
in the order of ``scales``, named by :attr:`ScaledMNISTDataModule.test_set_names` (``"scale0.5"``, ...,
``"scale1.0"``, ...): the classification task logs ``test/acc_<name>`` for each, and ``test/acc`` over all
of them (with equal-sized sets, the mean over scales).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from dcn.datamodules.classification.base import ClassificationDataModule, DigitClasses
from dcn.datamodules.classification.splits import stratified_split

__all__ = ["DEFAULT_SCALES", "ScaledMNISTDataModule", "read_idx", "scale_about_centre", "scale_name"]

DEFAULT_SCALES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_INTERPOLATIONS = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}


def read_idx(path: os.PathLike | str) -> Tensor:
    """An IDX file (MNIST's format; gzip-compressed when the name ends in ``.gz``) as a tensor.

    Raises:
        ValueError: naming the file, when its header or its length does not describe an IDX array.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:  # gzip raises these for a truncated or non-gzip file
        raise ValueError(f"{path}: cannot read it as an IDX file ({error})") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] < 1:
        raise ValueError(f"{path}: not an IDX file (header bytes {list(data[:4])})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(
            f"{path}: the header says {list(shape)} values of {dtype} but the file holds "
            f"{len(data) - offset} bytes of data (truncated?)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


def scale_about_centre(images: Tensor, scale: float, interpolation: str = "nearest") -> Tensor:
    """``images`` (Tensor[N, C, H, W], uint8 or float) zoomed by ``scale`` about the image centre, canvas
    size kept, uncovered pixels 0 (torchvision's ``affine``; see the module docstring)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
    if scale == 1.0:
        return images.clone()
    return TF.affine(
        images,
        angle=0.0,
        translate=[0.0, 0.0],
        scale=float(scale),
        shear=[0.0, 0.0],
        interpolation=_INTERPOLATIONS[interpolation],
        fill=[0.0],
    )


def scale_name(scale: float) -> str:
    """``0.5 -> "scale0.5"``, ``1.0 -> "scale1.0"``, ``0.75 -> "scale0.75"``: the metric suffix of a scale."""
    text = f"{scale:.3f}".rstrip("0")
    return "scale" + (text + "0" if text.endswith(".") else text)


class ScaledMNISTDataModule(DigitClasses, ClassificationDataModule):
    """The scaled-MNIST protocol on MNIST's test file (see the module docstring).

    Args:
        root: folder holding ``MNIST/raw/t10k-{images-idx3,labels-idx1}-ubyte[.gz]``.
        test_size: images drawn (stratified) from the 10,000 for the test sets.
        val_size: images drawn (stratified) from the rest for validation; the others train.
        split_seed: fixes the split.
        scales: the test scale factors; one test set (and one ``test/acc_<name>`` metric) each.
        interpolation: ``nearest`` (published) or ``bilinear``, for scaling the test images.
        normalize: ``(x - mean) / std`` after scaling; False gives images in [0, 1].
        mean, std: the normalisation (MNIST's by default).
        batch_size, num_workers, pin_memory: see :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        root: os.PathLike | str,
        test_size: int = 2000,
        val_size: int = 1000,
        split_seed: int = 0,
        scales: Sequence[float] = DEFAULT_SCALES,
        interpolation: str = "nearest",
        normalize: bool = True,
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        for key, value in (("test_size", test_size), ("val_size", val_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 10:
                raise ValueError(
                    f"data.{key} must be an integer >= 10 (one image per class at least), got {value!r}"
                )
        scales = [float(s) for s in scales]
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"data.scales must list positive scale factors, got {scales}")
        names = [scale_name(s) for s in scales]
        if len(set(names)) != len(names):
            raise ValueError(f"data.scales lists a scale twice (to 3 decimals): {scales}")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"data.interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}"
            )
        if not std > 0:
            raise ValueError(f"data.std must be positive, got {std}")
        self.root = Path(root)
        self.test_size, self.val_size, self.split_seed = test_size, val_size, split_seed
        self.scales = scales
        self.interpolation = interpolation
        self.normalize, self.mean, self.std = normalize, float(mean), float(std)
        self.test_sets: List[TensorDataset] = []

    @property
    def raw_folder(self) -> Path:
        return self.root / "MNIST" / "raw"

    @property
    def test_set_names(self) -> List[str]:
        """One name per test dataloader, in order: ``scale<factor>``."""
        return [scale_name(s) for s in self.scales]

    def _file(self, name: str) -> Path:
        for candidate in (self.raw_folder / name, self.raw_folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"MNIST's test file {name}[.gz] not found in {self.raw_folder} (data.root={str(self.root)!r}). "
            "The scaled-MNIST protocol reads only the official test set: put t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz (compressed or not) into <root>/MNIST/raw/"
        )

    def read_test_file(self) -> Tuple[Tensor, Tensor]:
        """All images (``uint8[N, 1, 28, 28]``) and labels (``int64[N]``) of MNIST's test file."""
        images_path, labels_path = (self._file(name) for name in _TEST_FILES)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dim() != 3 or images.dtype != torch.uint8 or labels.dim() != 1:
            raise ValueError(
                f"{images_path} / {labels_path}: expected uint8 images [N, H, W] and labels [N], got "
                f"{images.dtype}{list(images.shape)} and {labels.dtype}{list(labels.shape)}"
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{images_path} holds {images.shape[0]} images but {labels_path} {labels.shape[0]} labels"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 9):
            raise ValueError(f"{labels_path}: labels must be digits 0..9, got {sorted(set(labels.tolist()))}")
        return images.unsqueeze(1), labels.long()

    def split(self, labels: Tensor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(train, val, test)`` sorted index arrays into the test file (see the module docstring)."""
        train, test, val = stratified_split(labels.numpy(), (self.test_size, self.val_size), self.split_seed)
        return train, val, test

    def _tensors(self, images: Tensor) -> Tensor:
        pixels = images.float().div_(255)
        return pixels.sub_(self.mean).div_(self.std) if self.normalize else pixels

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        images, labels = self.read_test_file()
        train, val, test = self.split(labels)
        self.train_set = TensorDataset(self._tensors(images[train]), labels[train])
        self.val_set = TensorDataset(self._tensors(images[val]), labels[val])
        test_images = images[test]
        self.test_sets = [
            TensorDataset(self._tensors(scale_about_centre(test_images, s, self.interpolation)), labels[test])
            for s in self.scales
        ]
        # The unscaled test set (x1.0 if listed, else the first), for tools that look at one test set.
        self.test_set = self.test_sets[self.scales.index(1.0) if 1.0 in self.scales else 0]

    def test_dataloader(self) -> List[DataLoader]:
        if not self.test_sets:
            raise RuntimeError(f"{type(self).__name__}: the test split is not set up; call setup() first")
        return [
            self._loader(dataset, f"test ({name})", shuffle=False)
            for name, dataset in zip(self.test_set_names, self.test_sets)
        ]
