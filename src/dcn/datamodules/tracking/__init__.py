"""Tracking datamodules: training pairs (template and search crops) and whole sequences for evaluation.

``base.TrackingDataModule`` holds the loaders; a subclass implements ``load_split(split)`` returning
:class:`~dcn.datamodules.tracking.sequence.TrackingSequence` objects. One module per layout: ``vot``,
``got10k``, ``synthetic`` (generated VOT-layout data); ``pairs`` samples training pairs.
"""

from dcn.datamodules.tracking.base import TrackingDataModule
from dcn.datamodules.tracking.got10k import GOT10kDataModule
from dcn.datamodules.tracking.pairs import PairSampling
from dcn.datamodules.tracking.sequence import TrackingSequence
from dcn.datamodules.tracking.synthetic import SyntheticVOTDataModule
from dcn.datamodules.tracking.vot import VOTDataModule

__all__ = ["GOT10kDataModule", "PairSampling", "SyntheticVOTDataModule", "TrackingDataModule", "TrackingSequence",
           "VOTDataModule"]
