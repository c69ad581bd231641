"""Tracking datamodules: training pairs (template and search crops) and whole sequences for evaluation.

``base.TrackingDataModule`` holds the loaders; a subclass implements ``load_split(split)`` returning
:class:`~dcn.datamodules.tracking.sequence.TrackingSequence` objects. One module per layout: ``vot``,
``got10k``, ``otb``, ``synthetic`` (generated VOT-layout data); ``pairs`` samples training pairs;
``detection_pairs`` trains on the objects of a detection dataset and tests on any of those layouts.
"""

from dcn.datamodules.tracking.base import TrackingDataModule
from dcn.datamodules.tracking.detection_pairs import DetectionPairsDataModule
from dcn.datamodules.tracking.got10k import GOT10kDataModule
from dcn.datamodules.tracking.otb import read_otb_root, read_otb_sequence
from dcn.datamodules.tracking.pairs import PairSampling
from dcn.datamodules.tracking.sequence import TrackingSequence
from dcn.datamodules.tracking.synthetic import SyntheticVOTDataModule
from dcn.datamodules.tracking.vot import VOTDataModule

__all__ = [
    "DetectionPairsDataModule",
    "GOT10kDataModule",
    "PairSampling",
    "SyntheticVOTDataModule",
    "TrackingDataModule",
    "TrackingSequence",
    "VOTDataModule",
    "read_otb_root",
    "read_otb_sequence",
]
