"""Hydra callbacks of dcn's entry points (``conf/hydra/default.yaml``): checks that must run before
Hydra writes anything into a run directory.

:class:`SweepSummary` — a multirun ends by printing its sweep directory and the command that turns it
into a report.

:class:`RunDirectoryGuard` — a run never writes into another run's directory: a run directory that
already holds files (``hydra.run.dir=X`` used twice) is refused unless the run resumes from a
checkpoint inside it, and an output root that cannot be written is named in one line, before Hydra
fails deep inside ``mkdir``.

Hydra turns an exception raised by a callback into a warning and goes on, so the guard cannot stop
the run itself: it points Hydra at a scratch folder (so that nothing, not even Hydra's ``.hydra/``
files, is written into the refused directory) and keeps the error, which the entry point reports and
exits with (:func:`exit_if_refused`) before doing anything.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = ["RunDirectoryError", "RunDirectoryGuard", "SweepSummary", "check_run_directory", "exit_if_refused"]

_refused: Optional["RunDirectoryError"] = None  # set by the guard, reported by exit_if_refused
_scratch: Optional[str] = None


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used (the message names it and the ways out)."""


def _is_other_rank() -> bool:
    # Lightning relaunches train.py for ranks > 0 (same hydra.run.dir as rank 0); cluster launchers
    # start every rank with the same config. Only the first process checks.
    return any(
        os.environ.get(var, "0") not in ("", "0") for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    )


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_run_directory(run_dir: Path, key: str, ckpt_path: Optional[str] = None) -> None:
    """Raise :class:`RunDirectoryError` unless ``run_dir`` is new (or empty) and can be created, or
    ``ckpt_path`` lies inside it (resuming that run)."""
    run_dir = Path(run_dir).absolute()
    existing = _first_existing(run_dir)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirectoryError(
            f"cannot create the run directory {run_dir}: {existing} is not writable. Write runs elsewhere "
            "with paths.log_dir=<a writable folder> (or DCN_ROOT=<folder>, or hydra.run.dir=<folder>)."
        )
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    if ckpt_path:
        ckpt = Path(ckpt_path).absolute()
        if run_dir == ckpt or run_dir in ckpt.parents:
            return  # resuming the run that wrote this directory
    raise RunDirectoryError(
        f"{key}={run_dir} already holds another run's files "
        f"({', '.join(sorted(p.name for p in run_dir.iterdir())[:6])}); "
        "a new run never writes there. Either start a new run directory (leave hydra.run.dir unset, or give "
        f"another path), or resume that run: ckpt_path={run_dir}/checkpoints/last.ckpt"
    )


def exit_if_refused() -> None:
    """If the guard refused this run's directory: remove the scratch folder, print the reason in one
    line on stderr and exit with status 2. Entry points call it first."""
    if _refused is None:
        return
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)
    print(f"error: {_refused}", file=sys.stderr)
    sys.exit(2)


class RunDirectoryGuard(Callback):
    """Refuse a reused or unwritable run (or sweep) directory before Hydra writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._guard(config, "hydra.run.dir", config.get("ckpt_path"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._guard(config, "hydra.sweep.dir", None)

    @staticmethod
    def _guard(config: DictConfig, key: str, ckpt_path: Optional[str]) -> None:
        global _refused, _scratch
        if _is_other_rank():
            return
        try:
            check_run_directory(Path(OmegaConf.select(config, key)), key, ckpt_path)
        except RunDirectoryError as error:
            _refused, _scratch = error, tempfile.mkdtemp(prefix="dcn-refused-run-")
            with open_dict(config):
                OmegaConf.update(config, key, _scratch)


class SweepSummary(Callback):
    """At the end of a multirun: where its runs are and how to compare them."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _is_other_rank() or _refused is not None:
            return
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir")).absolute()
        print(f"sweep finished: {sweep_dir}\n  compare its runs: python -m dcn.report {sweep_dir}")
