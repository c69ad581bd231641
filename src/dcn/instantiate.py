"""Instantiating configs: groups that hold several objects, and configs read back from a run's files.

A run's ``results.json`` or ``.hydra/config.yaml`` is a file a user may be handed by someone else, and
Hydra's ``instantiate`` calls whatever ``_target_`` names. :func:`check_targets` therefore allows only
the classes dcn's configs use (dcn's backbones, datamodules, tasks, callbacks and loggers; torch's
optimizers, schedulers and layers; Lightning's trainer, callbacks, loggers and strategies), each
resolving to a class, before any of it is built; anything else is an error naming the key. Extend the
list for your own classes with the environment variable ``DCN_ALLOWED_TARGETS`` (comma-separated
prefixes, e.g. ``mylab.models.``). Configs of older dcn versions name some classes by modules that
have moved; :func:`check_targets` maps those to their current names.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import hydra
from omegaconf import DictConfig, ListConfig, open_dict

__all__ = [
    "ALLOWED_TARGET_PREFIXES",
    "LEGACY_TARGETS",
    "UnsafeTargetError",
    "check_targets",
    "instantiate_group",
]

ALLOWED_TARGET_PREFIXES: Tuple[str, ...] = (
    "dcn.backbones.",
    "dcn.datamodules.",
    "dcn.tasks.",
    "dcn.callbacks.",
    "dcn.loggers.",
    "torch.optim.",
    "torch.nn.",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
    "lightning.pytorch.strategies.",
    "lightning.pytorch.plugins.",
)

# Classes that moved between dcn versions: old _target_ -> current one (configs saved by older runs).
LEGACY_TARGETS: Dict[str, str] = {
    f"dcn.datamodules.{old}.{name}": f"dcn.datamodules.{name}"
    for old, names in {
        "mnist": ["MNISTDataModule"],
        "image_folder": ["ImageFolderDataModule"],
        "digits": ["DigitsDataModule"],
        "deformation": ["GeometricDeformation"],
        "voc_seg": ["VOCSegDataModule"],
        "voc_det": ["VOCDetDataModule"],
        "coco_det": ["CocoDetDataModule"],
        "vot": ["VOTDataModule"],
        "got10k": ["GOT10kDataModule"],
        "synthetic_seg": ["SyntheticSegDataModule"],
        "synthetic_det": ["SyntheticDetDataModule", "SyntheticDetGenerator"],
        "synthetic_vot": ["SyntheticVOTDataModule"],
        "synthetic_shapes": ["SyntheticShapesGenerator"],
        "synthetic_tracks": ["SyntheticTracksGenerator"],
    }.items()
    for name in names
}
LEGACY_TARGETS["dcn.callbacks.SamplePredictions"] = "dcn.callbacks.ValidationPictures"


class UnsafeTargetError(ValueError):
    """A config names a ``_target_`` outside the allow-list (the message names the key and file)."""


def _allowed_prefixes() -> Tuple[str, ...]:
    extra = tuple(p.strip() for p in os.environ.get("DCN_ALLOWED_TARGETS", "").split(",") if p.strip())
    return ALLOWED_TARGET_PREFIXES + extra


def _walk(node: Any, key: str):
    if isinstance(node, DictConfig):
        for k in node.keys():
            child_key = f"{key}.{k}" if key else str(k)
            yield from _walk(node.get(k), child_key)
        if "_target_" in node:
            yield key, node
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _walk(item, f"{key}[{i}]")


def check_targets(cfg: DictConfig, source: str, keys: Optional[List[str]] = None) -> DictConfig:
    """Check every ``_target_`` in ``cfg`` (or in its top-level ``keys``) against the allow-list,
    replacing moved dcn classes by their current names (in place); returns ``cfg``.

    Raises:
        UnsafeTargetError: a target outside the allow-list, or one that does not resolve to a class.
    """
    from hydra._internal.utils import _locate

    prefixes = _allowed_prefixes()
    roots = [(k, cfg.get(k)) for k in keys] if keys is not None else [("", cfg)]
    for root_key, root in roots:
        for key, node in _walk(root, root_key):
            target = node.get("_target_")
            if target in LEGACY_TARGETS:
                with open_dict(node):
                    node["_target_"] = target = LEGACY_TARGETS[target]
            where = f"'{key}._target_'" if key else "'_target_'"
            if not isinstance(target, str) or not target.startswith(prefixes):
                raise UnsafeTargetError(
                    f"{source}: {where} is {target!r}, which is not a class dcn's configs use; refusing to "
                    f"build it (a config file must not run arbitrary code). Allowed: {', '.join(prefixes)}. "
                    "For your own classes, add their prefix to DCN_ALLOWED_TARGETS."
                )
            try:
                obj = _locate(target)
            except Exception as error:
                raise UnsafeTargetError(
                    f"{source}: {where} = {target!r} cannot be imported: {error}"
                ) from None
            if not isinstance(obj, type):
                raise UnsafeTargetError(
                    f"{source}: {where} = {target!r} is a {type(obj).__name__}, not a class; "
                    "refusing to call it"
                )
    return cfg


def instantiate_group(node: Optional[DictConfig], group: str) -> List[Any]:
    """One object per entry of ``node`` (e.g. ``callbacks: {model_checkpoint: {_target_: ...}, ...}``).

    Entries set to null are skipped, so a single member can be switched off from the command line
    (``callbacks.progress_bar=null``). ``group`` names the config key in error messages.
    """
    if node is None:
        return []
    if not isinstance(node, DictConfig):
        raise TypeError(f"config '{group}' must be a mapping of name -> {{_target_: ...}}, got {node!r}")
    objects = []
    for name, entry in node.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(f"config '{group}.{name}' has no _target_: cannot instantiate it ({entry!r})")
        objects.append(hydra.utils.instantiate(entry))
    return objects
