"""Instantiate a config group that holds several objects (callbacks, loggers) as a list."""

from __future__ import annotations

from typing import Any, List, Optional

import hydra
from omegaconf import DictConfig

__all__ = ["instantiate_group"]


def instantiate_group(node: Optional[DictConfig], group: str) -> List[Any]:
    """One object per entry of ``node`` (e.g. ``callbacks: {model_checkpoint: {_target_: ...}, ...}``).

    Entries set to null are skipped, so a single member can be switched off from the command line
    (``callbacks.rich_progress_bar=null``). ``group`` names the config key in error messages.
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
