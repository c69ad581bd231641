"""``<run dir>/results.json``: the one file every report, plot and sweep summary reads about a run.

The file is written three times (each write atomic, by rank 0 only): when the run starts
(``status: "running"``, so a run killed mid-way is visible as unfinished), and when it ends with
``"completed"``, ``"failed"`` (with the error) or ``"interrupted"``. Layout (``schema_version`` 1)::

    status, error                   "completed" | "failed" | "interrupted" | "running";
                                    null or {type, message, traceback}
    run_dir, experiment_name, seed
    task, backbone, data            config group choices, e.g. "classification", "seed_net", "digits"
    deform                          the backbone's deform block (enabled, stages, modulated, offset_groups,
                                    extra_layers)
    data_config                     the data group's arguments (no _target_)
    overrides                       the command-line overrides of this run (Hydra's task overrides)
    metrics                         final test metrics, e.g. {"test/acc": 0.97, "test/loss": 0.1, ...}
    val_metrics                     validation metrics of the last epoch
    best                            {monitor, mode, value, checkpoint} of the checkpoint callback, or null
    last_checkpoint, metrics_csv    paths or null
    epochs, global_step             training progress when fit ended
    parameters                      {total, trainable, offset_predictor}
    trainer                         {accelerator, devices, num_nodes, precision}
    timing                          {started_at, finished_at (ISO 8601), wall_s, fit_s, test_s}
    versions                        python, torch, torchvision, lightning, hydra-core, ... , cuda
    code                            {git_commit, git_dirty} when run from a dcn checkout, else null
    config                          the full resolved config
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dcn.ops import DeformConv2dPack, DeformRoIPoolPack, MultiScaleDeformRoIPool

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "RunRecord",
    "fit_outcome",
    "library_versions",
    "parameter_counts",
    "trainer_description",
]

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1

_LIBRARIES = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "numpy",
    "scikit-learn",
    "dcn",
    "cupy-cuda13x",
    "cupy-cuda12x",
    "wandb",
)


def shown_path(path: os.PathLike | str) -> Path:
    """``path`` relative to the working directory when it lies below it: reports and JSON files made
    in a checkout then read the same on every machine and do not leak home directories."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()) or Path(".")
    except ValueError:
        return path


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """``{total, trainable, offset_predictor, roi_offset_head}`` parameter counts: ``offset_predictor``
    sums the ``conv_offset`` predictors of every :class:`~dcn.ops.DeformConv2dPack` (0 in a plain
    network), ``roi_offset_head`` the offset heads of deformable RoI pooling layers (0 without)."""
    offset = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, DeformConv2dPack)
        for p in m.conv_offset.parameters()
    )
    roi_offset = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, (DeformRoIPoolPack, MultiScaleDeformRoIPool))
        for name, p in m.named_parameters()
        if name.startswith("offset_head")  # offset_head (shared) or offset_heads.<level>
    )
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "offset_predictor": offset,
        "roi_offset_head": roi_offset,
    }


def library_versions() -> Dict[str, Optional[str]]:
    """Versions of Python, the installed libraries that shape results, and torch's CUDA (or None)."""
    versions: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if not name.startswith("cupy"):
                versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def code_version() -> Optional[Dict[str, Any]]:
    """``{"git_commit", "git_dirty"}`` of the dcn checkout this code runs from (``git_dirty``: tracked
    files differ from the commit), or None for an installed package or when git is unavailable."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


def trainer_description(trainer: L.Trainer) -> Dict[str, Any]:
    """``{accelerator, devices, num_nodes, world_size, precision}`` of a Trainer."""
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
    }


def fit_outcome(trainer: L.Trainer) -> Dict[str, Any]:
    """What ``trainer.fit`` left: best/last checkpoints, progress, final validation metrics and
    the CSV metrics file, as results.json fields."""
    checkpoint = trainer.checkpoint_callback
    best = None
    if isinstance(checkpoint, ModelCheckpoint):
        score = checkpoint.best_model_score
        best = {
            "monitor": checkpoint.monitor,
            "mode": checkpoint.mode,
            "value": float(score) if score is not None else None,
            "checkpoint": checkpoint.best_model_path or None,
        }
    csv_files = [
        str(Path(logger.log_dir) / "metrics.csv")
        for logger in trainer.loggers
        if isinstance(logger, CSVLogger)
    ]
    return {
        "best": best,
        "last_checkpoint": _last_checkpoint(trainer),
        "metrics_csv": csv_files[0] if csv_files else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "val_metrics": {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
    }


def _last_checkpoint(trainer: L.Trainer) -> Optional[str]:
    """The newest full checkpoint: a ModelCheckpoint's ``last.ckpt`` (``save_last``), or that of a
    ModelCheckpoint without a monitor (conf/callbacks/last_checkpoint.yaml), which keeps the newest."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            path = callback.last_model_path or (callback.best_model_path if callback.monitor is None else "")
            if path:
                return path
    return None


def _hydra_choices() -> Dict[str, Any]:
    """Config group choices and overrides of the running Hydra job ({} outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    return {
        "choices": dict(hydra_cfg.runtime.choices),
        "overrides": list(hydra_cfg.overrides.task),
    }


def _target_name(node: Any) -> Optional[str]:
    """``"ResNetBackbone"`` from ``{_target_: dcn.backbones.ResNetBackbone}``: a name outside Hydra."""
    target = node.get("_target_") if isinstance(node, Mapping) else None
    return target.rsplit(".", 1)[-1] if target else None


def _to_container(cfg: DictConfig) -> Dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # an interpolation that needs Hydra's runtime: keep it as written
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """Builds and writes one run's ``results.json`` (see the module docstring for its layout).

    Args:
        output_dir: the run directory.
        cfg: the run's composed config (the one ``train.py`` receives).
    """

    def __init__(self, output_dir: os.PathLike | str, cfg: DictConfig) -> None:
        self.path = Path(output_dir) / RESULTS_FILE
        self._written = False
        self._start = time.perf_counter()
        config = _to_container(cfg)
        hydra = _hydra_choices()
        choices = hydra.get("choices", {})
        backbone = config.get("backbone") or {}
        data = config.get("data") or {}
        self.data: Dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "error": None,
            "run_dir": str(Path(output_dir).resolve()),
            "experiment_name": config.get("experiment_name"),
            "seed": config.get("seed"),
            "task": choices.get("task") or _target_name(config.get("task")),
            "backbone": choices.get("backbone") or _target_name(backbone),
            "data": choices.get("data") or _target_name(data),
            "deform": backbone.get("deform") if isinstance(backbone, Mapping) else None,
            "data_config": {k: v for k, v in data.items() if k != "_target_"}
            if isinstance(data, Mapping)
            else None,
            "overrides": hydra.get("overrides", []),
            "metrics": {},
            "val_metrics": {},
            "best": None,
            "last_checkpoint": None,
            "metrics_csv": None,
            "epochs": None,
            "global_step": None,
            "parameters": None,
            "trainer": None,
            "timing": {
                "started_at": _now(),
                "finished_at": None,
                "wall_s": None,
                "fit_s": None,
                "test_s": None,
            },
            "versions": library_versions(),
            "code": code_version(),
            "config": config,
        }

    def update(self, **fields: Any) -> None:
        """Set top-level fields (``timing`` is merged); values are made JSON-serialisable."""
        timing = fields.pop("timing", None)
        if timing:
            self.data["timing"].update(_jsonable(timing))
        self.data.update(_jsonable(fields))

    def finish(self, status: str, error: Optional[BaseException] = None) -> None:
        """Record the end of the run (``status`` with the error if any) and write the file."""
        self.data["status"] = status
        if error is not None:
            self.data["error"] = {
                "type": type(error).__name__,
                "message": str(error),
                "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
            }
        self.data["timing"]["finished_at"] = _now()
        self.data["timing"]["wall_s"] = round(time.perf_counter() - self._start, 3)
        self.write()

    @rank_zero_only
    def write(self) -> None:
        """Write the file atomically (a reader never sees half of it); rank 0 only.

        If the run directory already holds another run's results.json (a directory reused on
        purpose, e.g. ``hydra.run.dir=...``), that file is first renamed to ``results.<n>.json``:
        a new run, failed or not, never destroys an earlier run's record.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._written and self.path.exists():
            n = 1
            while self.path.with_name(f"results.{n}.json").exists():
                n += 1
            os.replace(self.path, self.path.with_name(f"results.{n}.json"))
        self._written = True
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False) + "\n")
            os.replace(tmp, self.path)
        except BaseException:  # e.g. a full disk: no half-written file is left behind
            tmp.unlink(missing_ok=True)
            raise

    def header(self) -> str:
        """The run's configuration in a few lines, for the start of the console and train.log."""
        d = self.data
        from dcn.backbones.deformable import describe_deform

        setting = describe_deform(d.get("deform"))
        lines = [
            f"dcn run {d['experiment_name']}: task {d['task']}, backbone {d['backbone']}, {setting}, "
            f"data {d['data']}, seed {d['seed']}",
            f"  run dir   {d['run_dir']}",
        ]
        if d["overrides"]:
            lines.append(f"  overrides {' '.join(d['overrides'])}")
        return "\n".join(lines)

    def summary(self) -> str:
        """A few lines for the console: status, test metrics, run directory, best checkpoint."""
        d = self.data
        title = f"dcn run {d['status']} in {d['timing']['wall_s']:.1f} s"
        extra = []
        if d["error"]:
            extra.append(("error", f"{d['error']['type']}: {d['error']['message']}"))
        extra.append(("run dir", d["run_dir"]))
        best = d["best"] or {}
        if best.get("checkpoint"):
            score = (
                f" ({best['monitor']}={best['value']:.4f})" if isinstance(best.get("value"), float) else ""
            )
            extra.append(("best ckpt", f"{best['checkpoint']}{score}"))
        extra.append(("results", str(self.path)))
        return format_summary(title, d["metrics"], extra, error_first=True)


def format_summary(
    title: str, metrics: Dict[str, Any], extra: List[Tuple[str, str]], error_first: bool = False
) -> str:
    """The summary block train.py and dcn.eval print: a title, the metrics (fractions, 4 decimals; NaN
    shown as n/a with the reason once), then ``extra`` (label, text) lines."""
    lines = [title]
    width = max([len(k) for k in metrics] + [len(k) for k, _ in extra] + [12])
    head = [(k, v) for k, v in extra if k == "error"] if error_first else []
    for key, text in head:
        lines.append(f"  {key:<{width}} {text}")
    undefined = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, float) and math.isnan(value):
            undefined.append(key)
            lines.append(f"  {key:<{width}} n/a")
        else:
            lines.append(
                f"  {key:<{width}} {value:.4f}" if isinstance(value, float) else f"  {key:<{width}} {value}"
            )
    if undefined:
        lines.append(
            "  (n/a: not defined on this test set, e.g. no frame or class was scored: "
            f"{', '.join(undefined)})"
        )
    for key, text in extra:
        if (key, text) not in head:
            lines.append(f"  {key:<{width}} {text}")
    return "\n".join(lines)
