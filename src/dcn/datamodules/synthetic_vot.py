"""``synthetic_vot``: offline tracking data, generated once into ``<cache_dir>/tracks-<hash>/{train,val,test}``
(each a VOT-layout root, see :mod:`dcn.datamodules.synthetic_tracks`) and read back by the VOT loader.

The cache is :mod:`dcn.datamodules.generated_cache`'s: the folder name hashes the generator's
parameters, a ``generator.json`` written last marks it complete, and generation happens in a temporary
sibling renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

from dcn.datamodules import generated_cache
from dcn.datamodules.synthetic_tracks import SyntheticTracksGenerator
from dcn.datamodules.tracking_datamodule import TrackingDataModule
from dcn.datamodules.tracking_sequence import TrackingSequence
from dcn.datamodules.vot import read_vot_root

__all__ = ["GENERATOR_VERSION", "SyntheticVOTDataModule", "cache_folder", "ensure_generated"]

GENERATOR_VERSION = 1  # bump when the output changes for the same parameters
_PREFIX = "tracks"


def _cache_key(generator: SyntheticTracksGenerator) -> dict:
    return {"generator_version": GENERATOR_VERSION, **generator.params()}


def cache_folder(cache_dir: os.PathLike | str, generator: SyntheticTracksGenerator) -> Path:
    """``<cache_dir>/tracks-<12 hex digits>``: the folder for these generator parameters."""
    return generated_cache.cache_folder(cache_dir, _PREFIX, _cache_key(generator))


def ensure_generated(cache_dir: os.PathLike | str, generator: SyntheticTracksGenerator) -> Path:
    """Generate unless a complete copy for these parameters exists; returns its folder."""
    total = sum(generator.split_sizes().values())
    description = f"synthetic_vot: {total} sequences of {generator.num_frames} frames"
    return generated_cache.ensure_generated(cache_dir, _PREFIX, _cache_key(generator), generator.write, description)


class SyntheticVOTDataModule(TrackingDataModule):
    """Synthetic sequences (train / val / test generated separately), read as VOT roots.

    Args:
        cache_dir: where generated datasets are kept.
        generator: a :class:`SyntheticTracksGenerator` (None: its defaults).
        **kwargs: pair sampling and loader settings of :class:`TrackingDataModule`.
    """

    def __init__(self, cache_dir: os.PathLike | str, generator: Optional[SyntheticTracksGenerator] = None, **kwargs: Any):
        super().__init__(**kwargs)
        generator = generator if generator is not None else SyntheticTracksGenerator()
        if not isinstance(generator, SyntheticTracksGenerator):
            raise TypeError(f"data.generator must be a SyntheticTracksGenerator, got {type(generator).__name__}")
        self.cache_dir, self.generator = Path(cache_dir), generator

    @property
    def root(self) -> Path:
        return cache_folder(self.cache_dir, self.generator)

    def prepare_data(self) -> None:
        ensure_generated(self.cache_dir, self.generator)

    def load_split(self, split: str) -> List[TrackingSequence]:
        # Also here: setup() outside a Trainer must work; a complete cache costs one file read.
        return read_vot_root(ensure_generated(self.cache_dir, self.generator) / split)
