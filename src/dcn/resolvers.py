"""OmegaConf resolvers that dcn's configs use; :func:`register` must run before Hydra composes.

``${dcn.cwd:}`` — the directory the program was started from.

``${dcn.uid:}`` — a short random hex token, drawn anew for each config object and cached inside it
(OmegaConf caches resolver results per config root). The run directory pattern
``<time to the second>_${dcn.uid:}`` therefore never collides, even for runs started in the same second
on several machines writing to one shared file system; the timestamp alone would.
"""

from __future__ import annotations

import os
import secrets

from omegaconf import OmegaConf

__all__ = ["register", "unique_id"]

_UID_BYTES = 3  # 6 hex characters: 16.7 million values per second of start time


def unique_id() -> str:
    """A fresh random token of 6 hex characters, e.g. ``"3fa91c"``."""
    return secrets.token_hex(_UID_BYTES)


def register() -> None:
    """Register dcn's resolvers with OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver("dcn.uid"):
        OmegaConf.register_new_resolver("dcn.uid", unique_id, use_cache=True)
    if not OmegaConf.has_resolver("dcn.cwd"):
        # ``${hydra:runtime.cwd}`` is not available while the multirun sweeper resolves
        # ``hydra.sweep.dir``; the start directory is (Hydra 1.3 no longer changes directory).
        OmegaConf.register_new_resolver("dcn.cwd", os.getcwd, use_cache=True)
