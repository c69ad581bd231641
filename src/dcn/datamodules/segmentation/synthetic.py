"""``synthetic_seg``: the offline segmentation dataset, generated once into a VOC-layout cache and read
by the very same loader as PASCAL VOC (:class:`~dcn.datamodules.segmentation.voc.VOCSegDataModule`).

The cache lives in ``<cache_dir>/shapes-<hash of the generator's parameters>/`` (see
:mod:`dcn.datamodules.synthetic.cache`): changing any parameter selects a new folder (regenerated); the
same parameters reuse the existing one; an interrupted run or two processes generating at once never
leave a half-written dataset behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from dcn.datamodules.synthetic.cache import GeneratedDataset
from dcn.images import IMAGENET_MEAN, IMAGENET_STD
from dcn.datamodules.synthetic.shapes import SyntheticShapesGenerator
from dcn.datamodules.segmentation.voc import VOCSegDataModule

__all__ = ["SyntheticSegDataModule"]


class SyntheticSegDataModule(GeneratedDataset, VOCSegDataModule):
    """Deformed shapes on textured backgrounds (see :mod:`dcn.datamodules.synthetic.shapes`), written
    to ``cache_dir`` on first use and then read exactly as VOC is.

    Classes: ``background`` and the generator's shapes. Splits: ``train``, ``val`` and ``test``
    (a held-out test split, unlike VOC).

    Args:
        cache_dir: where generated datasets are kept (one sub-folder per parameter set).
        generator: a :class:`SyntheticShapesGenerator` (or None for its defaults).
        crop_size, scale_range, flip, val_crop_size, mean, std, batch_size, val_batch_size,
            num_workers, pin_memory: as for :class:`VOCSegDataModule`.
    """

    CACHE_PREFIX = "shapes"
    GENERATOR_VERSION = 1
    GENERATOR_TYPE = SyntheticShapesGenerator
    DESCRIPTION = "synthetic_seg: {total} images"

    def __init__(
        self,
        cache_dir: os.PathLike | str,
        generator: Optional[SyntheticShapesGenerator] = None,
        crop_size: int | Sequence[int] = 96,
        scale_range: Optional[Sequence[float]] = (0.75, 1.5),
        flip: bool = True,
        val_crop_size: Optional[int | Sequence[int]] = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 16,
        val_batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        root = self._init_generated(cache_dir, generator)
        super().__init__(
            root=root,
            download=False,
            class_names=self.generator.class_names,
            train_split="train",
            val_split="val",
            test_split="test",
            crop_size=crop_size,
            scale_range=scale_range,
            flip=flip,
            val_crop_size=val_crop_size,
            mean=mean,
            std=std,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )

