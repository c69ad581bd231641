"""``synthetic_seg``: the offline segmentation dataset, generated once into a VOC-layout cache and read
by the very same loader as PASCAL VOC (:class:`~dcn.datamodules.voc_seg.VOCSegDataModule`).

The cache lives in ``<cache_dir>/shapes-<hash of the generator's parameters>/`` (see
:mod:`dcn.datamodules.generated_cache`): changing any parameter selects a new folder (regenerated); the
same parameters reuse the existing one; an interrupted run or two processes generating at once never
leave a half-written dataset behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from dcn.datamodules import generated_cache
from dcn.datamodules.segmentation_transforms import IMAGENET_MEAN, IMAGENET_STD
from dcn.datamodules.synthetic_shapes import SyntheticShapesGenerator
from dcn.datamodules.voc_seg import VOCSegDataModule

__all__ = ["GENERATOR_VERSION", "SyntheticSegDataModule", "cache_folder", "ensure_generated"]

# Bump when the generator's output changes for the same parameters, so old caches are not reused.
GENERATOR_VERSION = 1
_PREFIX = "shapes"


def _cache_key(generator: SyntheticShapesGenerator) -> dict:
    return {"generator_version": GENERATOR_VERSION, **generator.params()}


def cache_folder(cache_dir: os.PathLike | str, generator: SyntheticShapesGenerator) -> Path:
    """``<cache_dir>/shapes-<12 hex digits>``: the folder for these generator parameters."""
    return generated_cache.cache_folder(cache_dir, _PREFIX, _cache_key(generator))


def ensure_generated(cache_dir: os.PathLike | str, generator: SyntheticShapesGenerator) -> Path:
    """Generate the dataset unless a complete copy for the same parameters exists; returns its folder
    (the ``root`` for :class:`VOCSegDataModule`)."""
    total = sum(generator.split_sizes().values())
    return generated_cache.ensure_generated(
        cache_dir, _PREFIX, _cache_key(generator), generator.write, f"synthetic_seg: {total} images"
    )


class SyntheticSegDataModule(VOCSegDataModule):
    """Deformed shapes on textured backgrounds (see :mod:`dcn.datamodules.synthetic_shapes`), written
    to ``cache_dir`` on first use and then read exactly as VOC is.

    Classes: ``background`` and the generator's shapes. Splits: ``train``, ``val`` and ``test``
    (a held-out test split, unlike VOC).

    Args:
        cache_dir: where generated datasets are kept (one sub-folder per parameter set).
        generator: a :class:`SyntheticShapesGenerator` (or None for its defaults).
        crop_size, scale_range, flip, val_crop_size, mean, std, batch_size, val_batch_size,
            num_workers, pin_memory: as for :class:`VOCSegDataModule`.
    """

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
        generator = generator if generator is not None else SyntheticShapesGenerator()
        if not isinstance(generator, SyntheticShapesGenerator):
            raise TypeError(f"data.generator must be a SyntheticShapesGenerator, got {type(generator).__name__}")
        self.cache_dir = Path(cache_dir)
        self.generator = generator
        super().__init__(
            root=cache_folder(cache_dir, generator),
            download=False,
            class_names=generator.class_names,
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

    def prepare_data(self) -> None:
        ensure_generated(self.cache_dir, self.generator)

    def setup(self, stage: Optional[str] = None) -> None:
        # Also here: setup() alone (outside a Trainer) must work; a complete cache costs one file read.
        ensure_generated(self.cache_dir, self.generator)
        super().setup(stage)
