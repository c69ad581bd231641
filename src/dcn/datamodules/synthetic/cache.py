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
from typing import Any, Callable, ClassVar, Dict, Optional

from lightning.pytorch.utilities import rank_zero_info

__all__ = ["MARKER", "GeneratedDataset", "cache_folder", "ensure_generated", "is_complete"]

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


class GeneratedDataset:
    """Mixin for a datamodule whose data a generator writes into ``cache_dir`` on first use, then
    read by the family's own loader (the mixin's base in the MRO, e.g. ``VOCSegDataModule``).

    A subclass sets :attr:`CACHE_PREFIX`, :attr:`GENERATOR_VERSION` (bump it when the generator's
    output changes for the same parameters, so old caches are not reused), :attr:`GENERATOR_TYPE`
    and :attr:`DESCRIPTION`, and calls :meth:`_init_generated` in its ``__init__``.
    ``prepare_data`` and ``setup`` generate the data unless a complete copy exists, then defer to the
    base (``setup()`` alone, outside a Trainer, must work; a complete cache costs one file read).
    """

    CACHE_PREFIX: ClassVar[str]
    GENERATOR_VERSION: ClassVar[int]
    GENERATOR_TYPE: ClassVar[type]
    DESCRIPTION: ClassVar[str]  # str.format'ed with ``total`` (items over all splits) and ``generator``

    cache_dir: Path
    generator: Any

    @classmethod
    def cache_key(cls, generator: Any) -> Dict[str, Any]:
        return {"generator_version": cls.GENERATOR_VERSION, **generator.params()}

    @classmethod
    def generated_folder(cls, cache_dir: os.PathLike | str, generator: Any) -> Path:
        """``<cache_dir>/<prefix>-<12 hex digits>``: the folder for these generator parameters."""
        return cache_folder(cache_dir, cls.CACHE_PREFIX, cls.cache_key(generator))

    @classmethod
    def generate(cls, cache_dir: os.PathLike | str, generator: Any) -> Path:
        """Generate unless a complete copy for these parameters exists; returns its folder."""
        total = sum(generator.split_sizes().values())
        description = cls.DESCRIPTION.format(total=total, generator=generator)
        return ensure_generated(
            cache_dir, cls.CACHE_PREFIX, cls.cache_key(generator), generator.write, description
        )

    def _init_generated(self, cache_dir: os.PathLike | str, generator: Any) -> Path:
        """Validate and keep ``cache_dir`` and ``generator`` (None: the generator's defaults);
        returns the folder the data will be in."""
        generator = generator if generator is not None else self.GENERATOR_TYPE()
        if not isinstance(generator, self.GENERATOR_TYPE):
            raise TypeError(
                f"data.generator must be a {self.GENERATOR_TYPE.__name__}, got {type(generator).__name__}"
            )
        self.cache_dir, self.generator = Path(cache_dir), generator
        return self.generated_folder(cache_dir, generator)

    def prepare_data(self) -> None:
        self.generate(self.cache_dir, self.generator)
        super().prepare_data()  # type: ignore[misc]

    def setup(self, stage: Optional[str] = None) -> None:
        self.generate(self.cache_dir, self.generator)
        super().setup(stage)  # type: ignore[misc]
