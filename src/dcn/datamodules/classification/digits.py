"""``digits``: scikit-learn's bundled 8x8 handwritten digits, deformed on a larger canvas.

The 1,797 real samples ship with scikit-learn (``sklearn.datasets.load_digits``), so this is the
dataset that works offline, on a fresh install, in seconds: dcn's default for ``make train``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from dcn.datamodules.classification.base import ClassificationDataModule, DeformedDigits
from dcn.datamodules.classification.deformation import GeometricDeformation
from dcn.datamodules.classification.splits import stratified_split

__all__ = ["DigitsDataModule"]

_DIGITS_MAX = 16.0  # load_digits pixel values are integers in [0, 16]


class DigitsDataModule(DeformedDigits, ClassificationDataModule):
    """scikit-learn digits, upsampled onto a canvas under random geometric deformation.

    Each 8x8 digit is bilinearly upsampled to ``digit_size`` pixels and centred on a black
    ``canvas_size`` canvas (28 and 20 mimic MNIST's layout), then deformed by ``deformation``.

    Splits are stratified and fixed by ``split_seed`` (1,797 samples; by default 1,257 / 270 / 270).
    Deformations follow :class:`~dcn.datamodules.classification.base.DeformedDigits`.

    Batches: ``(Tensor[B, 1, canvas_size, canvas_size] float32 in [0, 1], Tensor[B] int64)``.

    Args:
        deformation: the random deformation; None keeps digits upright and centred.
        deform_eval: also deform validation and test samples (fixed per sample).
        canvas_size: side of the output images in pixels.
        digit_size: side of the upsampled digit in pixels (<= canvas_size).
        val_fraction, test_fraction: share of the samples held out for validation and test.
        split_seed: seed of the train/val/test split.
        eval_seed: seed of the fixed validation/test deformations.
        batch_size, num_workers, pin_memory: see :class:`ClassificationDataModule`.
    """

    def __init__(
        self,
        deformation: Optional[GeometricDeformation] = None,
        deform_eval: bool = True,
        canvas_size: int = 28,
        digit_size: int = 20,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        eval_seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if not 8 <= digit_size <= canvas_size:
            raise ValueError(
                f"data.digit_size must be in [8, data.canvas_size={canvas_size}], got {digit_size}"
            )
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise ValueError(f"data.{key} must be a fraction in (0, 1), got {value}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}"
            )
        self.set_deformation(deformation, deform_eval, split_seed, eval_seed)
        self.canvas_size, self.digit_size = canvas_size, digit_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        # Imported here: scikit-learn (compiled) is needed by data=digits only, so the other datamodules and
        # tasks import on machines without it (e.g. a bare GPU host running make gpu-check).
        from sklearn.datasets import load_digits  # noqa: PLC0415

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / _DIGITS_MAX).unsqueeze(1)
        images = F.interpolate(images, size=self.digit_size, mode="bilinear", align_corners=False)
        pad = self.canvas_size - self.digit_size
        images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)).clamp_(0, 1)
        targets = torch.from_numpy(digits.target).long()

        n = len(targets)
        sizes = (round(self.val_fraction * n), round(self.test_fraction * n))
        train_idx, val_idx, test_idx = stratified_split(digits.target, sizes, self.split_seed)
        self.set_deformed_splits(*((images[idx], targets[idx]) for idx in (train_idx, val_idx, test_idx)))
