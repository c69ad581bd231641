"""Lightning's W&B logger with dcn's defaults: never prompts, offline without credentials, one W&B
run per Hydra job, best-value summaries, and the same W&B run when a training run is resumed.

``logger=wandb`` (or ``logger=[csv,wandb]``) selects it; conf/logger/wandb.yaml fills the project
(``dcn``), the group (the experiment name), the job type (the task), the run name (backbone, deform
setting, seed) and the tags. train.py logs the resolved config as the run's config.
"""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = ["WandbLogger", "wandb_credentials_available", "wandb_run_id_of"]

_MODES = ("auto", "online", "offline", "disabled")
_SUMMARY_MODES = ("max", "min", "mean", "last")
# WANDB_MODE values wandb accepts for a run of its own, with dcn's name for each ("dryrun" and "run" are
# old aliases).
_ENV_MODES = {
    "online": "online",
    "offline": "offline",
    "disabled": "disabled",
    "dryrun": "offline",
    "run": "online",
}
# wandb names its run directories <save_dir>/wandb/[offline-]run-<YYYYmmdd_HHMMSS>-<run id>.
_RUN_DIR = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-([a-z0-9]+)$")


def wandb_credentials_available() -> bool:
    """Whether wandb could log in without asking: ``WANDB_API_KEY`` is set, or the netrc file
    (``$NETRC`` or ``~/.netrc``, where ``wandb login`` stores the key) has an entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_run_id_of(ckpt_path: os.PathLike | str) -> Optional[str]:
    """The W&B run id of the training run that wrote ``ckpt_path`` (``<run dir>/checkpoints/x.ckpt``),
    read from ``<run dir>/wandb/``; None if that run did not log to W&B. The newest wins (a resumed
    run's directory holds the id it continued)."""
    run_dir = Path(ckpt_path).resolve().parent.parent
    found = []
    for child in (run_dir / "wandb").glob("*run-*"):
        match = _RUN_DIR.match(child.name)
        if match and child.is_dir():
            found.append(match.groups())
    return max(found)[1] if found else None


class WandbLogger(_LightningWandbLogger):
    """:class:`lightning.pytorch.loggers.WandbLogger` that never prompts for a login.

    Args:
        save_dir: where wandb writes its files (the run directory: ``<run dir>/wandb/``).
        project, group, job_type, name, tags: as in ``wandb.init``.
        mode: "auto" (``WANDB_MODE`` from the environment when set; else online when credentials
            are available, offline without, see :func:`wandb_credentials_available`), "online",
            "offline" or "disabled" (these win over ``WANDB_MODE``, as ``wandb.init(mode=...)`` does,
            with a warning). The resolved mode is :attr:`mode`.
        summary: best-value summaries (``wandb.define_metric``): a list of ``{metric, mode}`` with
            mode "max" | "min" | "mean" | "last", e.g. ``[{metric: val/acc, mode: max}]``.
        resume_from: a checkpoint being resumed (``ckpt_path``); if its run logged to W&B, this
            logger continues that W&B run (same id) instead of starting a new one.
        **kwargs: passed on to Lightning's WandbLogger and ``wandb.init``.
    """

    def __init__(
        self,
        save_dir: os.PathLike | str,
        project: str = "dcn",
        group: Optional[str] = None,
        job_type: Optional[str] = None,
        name: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
        mode: str = "auto",
        summary: Optional[Iterable[Mapping[str, str]]] = None,
        resume_from: Optional[os.PathLike | str] = None,
        log_model: bool = False,
        **kwargs: Any,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"logger.wandb.mode must be one of {_MODES}, got {mode!r}")
        self._summary: Dict[str, str] = {}
        for entry in summary or ():
            valid = isinstance(entry, Mapping) and set(entry) == {"metric", "mode"}
            if not valid or entry["mode"] not in _SUMMARY_MODES:
                raise ValueError(
                    "logger.wandb.summary entries must be "
                    f"{{metric: <name>, mode: one of {_SUMMARY_MODES}}}, "
                    f"got {entry!r}"
                )
            self._summary[str(entry["metric"])] = str(entry["mode"])
        mode = _resolve_mode(mode)
        if mode != "online" and log_model:
            rank_zero_warn(
                f"W&B runs {mode}: log_model={log_model} ignored (checkpoints stay in the run directory)"
            )
            log_model = False

        run_id = kwargs.pop("id", None)
        if resume_from is not None and run_id is None:
            run_id = wandb_run_id_of(resume_from)
            if run_id:
                rank_zero_info(f"W&B: resuming run {run_id} (from {resume_from})")

        _finish_previous_run()
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(
            save_dir=os.fspath(save_dir),
            project=project,
            group=group,
            job_type=job_type,
            name=name,
            tags=list(tags) if tags else None,
            mode=mode,
            id=run_id,
            log_model=log_model,
            **kwargs,
        )
        self.mode = mode
        if mode == "offline":
            rank_zero_info(
                "W&B: no credentials (WANDB_API_KEY or `wandb login`): logging offline to "
                f"{Path(save_dir) / 'wandb'}. Upload later with: "
                f"wandb sync {Path(save_dir) / 'wandb'}/offline-run-*"
            )

    @property
    def experiment(self):  # type: ignore[override]
        run = super().experiment
        if self._summary and not getattr(self, "_summary_defined", False) and hasattr(run, "define_metric"):
            for metric, how in self._summary.items():
                run.define_metric(metric, summary=how)
            self._summary_defined = True
        return run


def _resolve_mode(mode: str) -> str:
    """The mode wandb will run in: an explicit ``mode`` as given (``wandb.init``'s argument beats
    ``WANDB_MODE``, so it does here too); ``"auto"``: ``WANDB_MODE`` when set, else online with
    credentials and offline without."""
    env = os.environ.get("WANDB_MODE") or None  # set but empty: as unset
    if env is not None and env not in _ENV_MODES:
        raise ValueError(f"WANDB_MODE={env!r} in the environment: expected one of {sorted(_ENV_MODES)}")
    env = _ENV_MODES[env] if env else None
    if mode == "auto":
        if env:
            return env
        return "online" if wandb_credentials_available() else "offline"
    if env and env != mode:
        rank_zero_warn(
            f"W&B runs {mode} (logger.wandb.mode={mode}), not {env} as WANDB_MODE in the environment asks"
        )
    return mode


def _finish_previous_run() -> None:
    """Finish a W&B run that an earlier Hydra job of this process left open.

    Lightning reuses ``wandb.run`` when one is active, so without this every job of a multirun in
    one process (Hydra's basic launcher) would log into the first job's W&B run.
    """
    import wandb

    if wandb.run is not None:
        wandb.finish()
