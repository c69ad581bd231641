"""``synthetic_vot``: offline tracking data, generated once into
``<cache_dir>/tracks-<hash>/{train,val,test}`` (each a VOT-layout root, see
:mod:`dcn.datamodules.synthetic.tracks`) and read back by the VOT loader.

The cache is :mod:`dcn.datamodules.synthetic.cache`'s: the folder name hashes the generator's
parameters, a ``generator.json`` written last marks it complete, and generation happens in a temporary
sibling renamed into place.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from dcn.datamodules.synthetic.cache import GeneratedDataset
from dcn.datamodules.synthetic.tracks import SyntheticTracksGenerator
from dcn.datamodules.tracking.base import TrackingDataModule
from dcn.datamodules.tracking.sequence import TrackingSequence
from dcn.datamodules.tracking.vot import read_vot_root

__all__ = ["SyntheticVOTDataModule"]


class SyntheticVOTDataModule(GeneratedDataset, TrackingDataModule):
    """Synthetic sequences (train / val / test generated separately), read as VOT roots.

    Args:
        cache_dir: where generated datasets are kept.
        generator: a :class:`SyntheticTracksGenerator` (None: its defaults).
        **kwargs: pair sampling and loader settings of :class:`TrackingDataModule`.
    """

    CACHE_PREFIX = "tracks"
    GENERATOR_VERSION = 1
    GENERATOR_TYPE = SyntheticTracksGenerator
    DESCRIPTION = "synthetic_vot: {total} sequences of {generator.num_frames} frames"

    def __init__(
        self,
        cache_dir: os.PathLike | str,
        generator: Optional[SyntheticTracksGenerator] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.root = self._init_generated(cache_dir, generator)

    def load_split(self, split: str) -> List[TrackingSequence]:
        return read_vot_root(self.root / split)
