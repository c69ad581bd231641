"""mmcv's ``Modulated*Pack`` names: the same layers with ``modulated=True`` (DCN v2) by default."""

from __future__ import annotations

from typing import Any

__all__ = ["ModulatedByDefault"]


class ModulatedByDefault:
    """Mixin placed before a ``*Pack`` layer class: ``modulated`` defaults to True (an explicit
    ``modulated=False`` still wins)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("modulated", True)
        super().__init__(*args, **kwargs)
