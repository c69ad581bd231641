"""``synthetic_vot``: offline tracking data, generated once into ``<cache_dir>/tracks-<hash>/{train,val,test}``
(each a VOT-layout root, see :mod:`dcn.datamodules.synthetic_tracks`) and read back by the VOT loader.

As for ``synthetic_seg``: the folder name hashes the generator's parameters, a ``generator.json``
written last marks it complete, and generation happens in a temporary sibling renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, List, Optional

from lightning.pytorch.utilities import rank_zero_info

from dcn.datamodules.synthetic_tracks import SyntheticTracksGenerator
from dcn.datamodules.tracking_datamodule import TrackingDataModule
from dcn.datamodules.tracking_sequence import TrackingSequence
from dcn.datamodules.vot import read_vot_root

__all__ = ["GENERATOR_VERSION", "SyntheticVOTDataModule", "ensure_generated"]

GENERATOR_VERSION = 1  # bump when the output changes for the same parameters
_MARKER = "generator.json"


def _cache_key(generator: SyntheticTracksGenerator) -> dict:
    return {"generator_version": GENERATOR_VERSION, **generator.params()}


def cache_folder(cache_dir: os.PathLike | str, generator: SyntheticTracksGenerator) -> Path:
    digest = hashlib.sha256(json.dumps(_cache_key(generator), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"tracks-{digest}"


def _complete(folder: Path, generator: SyntheticTracksGenerator) -> bool:
    marker = folder / _MARKER
    return marker.is_file() and json.loads(marker.read_text()) == _cache_key(generator)


def ensure_generated(cache_dir: os.PathLike | str, generator: SyntheticTracksGenerator) -> Path:
    """Generate unless a complete copy for these parameters exists; returns its folder."""
    folder = cache_folder(cache_dir, generator)
    if _complete(folder, generator):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    total = sum(generator.split_sizes().values())
    rank_zero_info(f"synthetic_vot: generating {total} sequences of {generator.num_frames} frames into {folder}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        generator.write(tmp)
        (tmp / _MARKER).write_text(json.dumps(_cache_key(generator), indent=2, sort_keys=True) + "\n")
        if folder.exists():
            if _complete(folder, generator):  # a concurrent writer finished first
                return folder
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


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
