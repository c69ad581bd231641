"""``synthetic_seg``: the offline segmentation dataset, generated once into a VOC-layout cache and read
by the very same loader as PASCAL VOC (:class:`~dcn.datamodules.segmentation.voc.VOCSegDataModule`).

The cache lives in ``<cache_dir>/shapes-<hash of the generator's parameters>/`` (see
:mod:`dcn.datamodules.synthetic.cache`): changing any parameter selects a new folder (regenerated); the
same parameters reuse the existing one; an interrupted run or two processes generating at once never
leave a half-written dataset behind.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from dcn.datamodules.segmentation.voc import VOCSegDataModule
from dcn.datamodules.synthetic.cache import GeneratedDataset
from dcn.datamodules.synthetic.shapes import SyntheticShapesGenerator

__all__ = ["SyntheticSegDataModule"]


class SyntheticSegDataModule(GeneratedDataset, VOCSegDataModule):
    """Deformed shapes on textured backgrounds (see :mod:`dcn.datamodules.synthetic.shapes`), written
    to ``cache_dir`` on first use and then read exactly as VOC is.

    Classes: ``background`` and the generator's shapes. Splits: ``train``, ``val`` and ``test``
    (a held-out test split, unlike VOC).

    Args:
        cache_dir: where generated datasets are kept (one sub-folder per parameter set).
        generator: a :class:`SyntheticShapesGenerator` (or None for its defaults).
        **options: the loader and augmentation arguments of :class:`VOCSegDataModule` (``crop_size``,
            ``scale_range``, ``flip``, ``val_crop_size``, ``mean``, ``std``, ``batch_size``, ...); the
            defaults are :attr:`DEFAULTS` (small crops and batches for the small generated images).
    """

    CACHE_PREFIX = "shapes"
    GENERATOR_VERSION = 1
    GENERATOR_TYPE = SyntheticShapesGenerator
    DESCRIPTION = "synthetic_seg: {total} images"
    DEFAULTS = dict(
        crop_size=96,
        scale_range=(0.75, 1.5),
        val_crop_size=None,
        batch_size=16,
        val_batch_size=16,
        num_workers=0,
    )

    def __init__(
        self,
        cache_dir: os.PathLike | str,
        generator: Optional[SyntheticShapesGenerator] = None,
        **options: Any,
    ) -> None:
        root = self._init_generated(cache_dir, generator)
        splits = dict(train_split="train", val_split="val", test_split="test")
        super().__init__(
            root=root,
            download=False,
            class_names=self.generator.class_names,
            **splits,
            **{**self.DEFAULTS, **options},
        )
