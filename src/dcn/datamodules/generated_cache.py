"""A folder cache for generated datasets, shared by the synthetic datamodules.

Layout: ``<cache_dir>/<prefix>-<12 hex digits>/`` where the digits are the start of the sha256 of the
JSON form of ``key`` (a dict of JSON-able values: every parameter that changes the output, plus a
generator version). A ``generator.json`` holding ``key`` is written last and marks the folder complete.

Generation writes into a temporary sibling (``.<folder name>.<random>``) that is renamed into place with
:func:`os.replace`, so an interrupted run never leaves a folder that looks complete. When two processes
generate at once, the one that finishes second finds a complete folder and drops its own copy. A folder
without a valid marker (a killed run from before the rename existed, or a hand-edited one) is replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

from lightning.pytorch.utilities import rank_zero_info

__all__ = ["MARKER", "cache_folder", "ensure_generated", "is_complete"]

MARKER = "generator.json"


def cache_folder(cache_dir: os.PathLike | str, prefix: str, key: Dict[str, Any]) -> Path:
    """``<cache_dir>/<prefix>-<first 12 hex digits of sha256(json(key))>``: the folder for ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{prefix}-{digest}"


def is_complete(folder: Path, key: Dict[str, Any]) -> bool:
    """Whether ``folder`` holds a marker equal to ``key`` (i.e. a finished generation for it)."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == key
    except (OSError, ValueError):  # a truncated or garbled marker is as good as none
        return False


def ensure_generated(
    cache_dir: os.PathLike | str,
    prefix: str,
    key: Dict[str, Any],
    write: Callable[[Path], Any],
    description: str,
) -> Path:
    """Return the cache folder for ``key``, first generating it with ``write(tmp_folder)`` unless a
    complete copy exists.

    Args:
        cache_dir: the parent of all cached datasets (created if missing).
        prefix: the folder name's prefix, e.g. ``"shapes"``.
        key: JSON-able parameters; the folder name hashes them and the marker stores them.
        write: fills the (empty, existing) folder it is given; its return value is ignored.
        description: what is generated, for the log line (e.g. ``"synthetic_seg: 448 images"``).
    """
    folder = cache_folder(cache_dir, prefix, key)
    if is_complete(folder, key):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    rank_zero_info(f"{description} -> generating into {folder}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(tmp)
        # Written last: its presence means everything before it is on disk.
        (tmp / MARKER).write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            if is_complete(folder, key):  # a concurrent writer finished first: keep theirs
                return folder
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete leftover
        try:
            os.replace(tmp, folder)
        except OSError:
            # Renaming onto a non-empty directory fails: another writer put its copy in place
            # between our check and the rename. Theirs is as good as ours if it is complete.
            if not is_complete(folder, key):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
