"""Lightning datamodules, one sub-package per task family.

``classification/``, ``segmentation/``, ``detection/`` and ``tracking/`` each hold their base next to
one module per dataset format; ``synthetic/`` the generators of the offline datasets and their cache;
``voc/`` the Pascal VOC layout helpers shared by segmentation and detection. Every datamodule is
importable from here (``dcn.datamodules.VOCDetDataModule``), which is how the configs name them.

Every datamodule exposes what the model needs to be built (``in_channels``, ``num_classes``,
``class_names``); ``train.py`` hands them to the backbone and the task, so neither is written twice in
the configs.
"""

from dcn.datamodules.classification import (
    ClassificationDataModule,
    DeformedImageDataset,
    DigitsDataModule,
    GeometricDeformation,
    ImageFolderDataModule,
    MNISTDataModule,
    ScaledMNISTDataModule,
)
from dcn.datamodules.detection import (
    CocoDetDataModule,
    DetectionLoaders,
    SyntheticDetDataModule,
    SyntheticDetGenerator,
    VOCDetDataModule,
)
from dcn.datamodules.segmentation import SyntheticSegDataModule, VOCSegDataModule
from dcn.datamodules.synthetic import SyntheticShapesGenerator, SyntheticTracksGenerator
from dcn.datamodules.tracking import (
    DetectionPairsDataModule,
    GOT10kDataModule,
    PairSampling,
    SyntheticVOTDataModule,
    TrackingDataModule,
    VOTDataModule,
)

__all__ = [
    "ClassificationDataModule",
    "CocoDetDataModule",
    "DeformedImageDataset",
    "DetectionLoaders",
    "DetectionPairsDataModule",
    "DigitsDataModule",
    "GOT10kDataModule",
    "GeometricDeformation",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "PairSampling",
    "ScaledMNISTDataModule",
    "SyntheticDetDataModule",
    "SyntheticDetGenerator",
    "SyntheticSegDataModule",
    "SyntheticShapesGenerator",
    "SyntheticTracksGenerator",
    "SyntheticVOTDataModule",
    "TrackingDataModule",
    "VOCDetDataModule",
    "VOCSegDataModule",
    "VOTDataModule",
]
