"""Module paths that moved, kept importable for a while: importing an old path warns
(``FutureWarning``, naming the new path) and gives the module at its new path.

:data:`MOVED_MODULES` is the list of what moved; :data:`SPLIT_MODULES` names modules whose contents
went to several places, whose import fails with a message saying where each name went. Every name a
package exports (``from dcn.datamodules import VOCDetDataModule``, ...) kept its import path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Dict, Optional, Sequence

__all__ = ["MOVED_MODULES", "SPLIT_MODULES", "install"]

_DM = "dcn.datamodules"
MOVED_MODULES: Dict[str, str] = {
    # datamodules by family (classification, segmentation, detection, tracking, synthetic, voc)
    f"{_DM}.classification_datamodule": f"{_DM}.classification.base",
    f"{_DM}.deformation": f"{_DM}.classification.deformation",
    f"{_DM}.deformed_dataset": f"{_DM}.classification.deformed_dataset",
    f"{_DM}.digits": f"{_DM}.classification.digits",
    f"{_DM}.image_folder": f"{_DM}.classification.image_folder",
    f"{_DM}.mnist": f"{_DM}.classification.mnist",
    f"{_DM}.splits": f"{_DM}.classification.splits",
    f"{_DM}.segmentation_transforms": f"{_DM}.segmentation.transforms",
    f"{_DM}.voc_seg": f"{_DM}.segmentation.voc",
    f"{_DM}.synthetic_seg": f"{_DM}.segmentation.synthetic",
    f"{_DM}.detection_samples": f"{_DM}.detection.base",
    f"{_DM}.coco_det": f"{_DM}.detection.coco",
    f"{_DM}.voc_det": f"{_DM}.detection.voc",
    f"{_DM}.synthetic_det": f"{_DM}.detection.synthetic",
    f"{_DM}.tracking_datamodule": f"{_DM}.tracking.base",
    f"{_DM}.got10k": f"{_DM}.tracking.got10k",
    f"{_DM}.vot": f"{_DM}.tracking.vot",
    f"{_DM}.tracking_pairs": f"{_DM}.tracking.pairs",
    f"{_DM}.tracking_sequence": f"{_DM}.tracking.sequence",
    f"{_DM}.synthetic_vot": f"{_DM}.tracking.synthetic",
    f"{_DM}.generated_cache": f"{_DM}.synthetic.cache",
    f"{_DM}.synthetic_shapes": f"{_DM}.synthetic.shapes",
    f"{_DM}.synthetic_tracks": f"{_DM}.synthetic.tracks",
    f"{_DM}.label_png": f"{_DM}.voc.label_png",
    # shared geometry out of the data layer
    f"{_DM}.tracking_boxes": "dcn.geometry.boxes",
    f"{_DM}.tracking_crops": "dcn.geometry.crops",
    # SamplePredictions became ValidationPictures (every task's validation pictures)
    "dcn.callbacks.sample_predictions": "dcn.callbacks.validation_pictures",
}

SPLIT_MODULES: Dict[str, str] = {
    "dcn.callbacks.figures": "publish_figure is in dcn.figures; is_drawing_epoch and first_validation_items "
    "are in dcn.callbacks.schedule",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Consulted after the normal finders, so only for paths that no longer exist."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname in SPLIT_MODULES:
            raise ModuleNotFoundError(f"{fullname} was split: {SPLIT_MODULES[fullname]}", name=fullname)
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED_MODULES[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import from there (the old path will be removed)",
            FutureWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module at the new path is already executed


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
