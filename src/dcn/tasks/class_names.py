"""Class names for a task's tables and pictures: the configured ones, else the datamodule's, else the
ones saved in the checkpoint the weights came from, else ``class_<k>``."""

from __future__ import annotations

from typing import List

import lightning as L

__all__ = ["CHECKPOINT_KEY", "resolve_class_names"]

CHECKPOINT_KEY = "class_names"


def resolve_class_names(module: L.LightningModule) -> List[str]:
    """``module.hparams.class_names`` when set; else the attached datamodule's ``class_names`` when it
    lists ``module.hparams.num_classes`` names; else the names saved with the checkpoint the module
    was loaded from (:class:`NamedClasses`); else ``class_0 .. class_<num_classes - 1>``."""
    configured = module.hparams.get("class_names")
    if configured is not None:
        return list(configured)
    num_classes = module.hparams.num_classes
    trainer = module._trainer  # None outside a Trainer (module.trainer would raise)
    for names in (
        getattr(getattr(trainer, "datamodule", None), "class_names", None),
        getattr(module, "checkpoint_class_names", None),
    ):
        if names is not None and len(names) == num_classes:
            return list(names)
    return [f"class_{k}" for k in range(num_classes)]
