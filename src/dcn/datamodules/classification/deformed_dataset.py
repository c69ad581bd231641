"""An in-memory image classification dataset under random geometric deformation."""

from __future__ import annotations

import hashlib
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dcn.datamodules.classification.deformation import GeometricDeformation

__all__ = ["DeformedImageDataset"]


class DeformedImageDataset(Dataset):
    """Images held in memory, each deformed as it is read.

    Args:
        images: Tensor[N, C, H, W], uint8 in [0, 255] or floating point in [0, 1].
        targets: Tensor[N] of class indices.
        deformation: applied to every image read; None reads images as they are.
        fixed_seed: None draws a new deformation on every read (training: the set changes each
            epoch). An int fixes each sample's deformation: sample ``i`` is always deformed with a
            generator seeded from ``(fixed_seed, i)`` (validation/test: the same set in every run).

    Items are ``(image Tensor[C, H, W] float32 in [0, 1], target int64 scalar tensor)``.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        deformation: Optional[GeometricDeformation] = None,
        fixed_seed: Optional[int] = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be Tensor[N, C, H, W], got shape {tuple(images.shape)}")
        if targets.shape != (images.shape[0],):
            raise ValueError(
                f"targets must be Tensor[N] with N={images.shape[0]} to match images, "
                f"got shape {tuple(targets.shape)}"
            )
        self.images = images
        self.targets = targets.long()
        self.deformation = deformation
        self.fixed_seed = fixed_seed

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image = self.images[index]
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        if self.deformation is not None:
            image = self.deformation(image, self._generator(index))
        return image, self.targets[index]

    def _generator(self, index: int) -> Optional[torch.Generator]:
        if self.fixed_seed is None:
            return None
        # Hash (seed, index) so neighbouring seeds do not share per-sample streams.
        digest = hashlib.blake2b(f"{self.fixed_seed}:{index}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little"))
