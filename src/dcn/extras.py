"""Optional dependencies: which parts of dcn need which extra, and the error that says how to get it.

The core install runs ``import dcn.ops``, the backbones and ``dcn-train`` with the default config.
Everything else is an extra of the ``dcn`` package (``pip install 'dcn[wandb]'``; in a checkout
``pip install -e '.[wandb]'``; ``make install`` installs ``.[all,dev]``):

=============  ==========================================  ==========================================
extra          modules                                     needed by
=============  ==========================================  ==========================================
wandb          wandb                                       ``logger=wandb``
tensorboard    tensorboard                                 ``logger=tensorboard``
sweeps         hydra_plugins (submitit, joblib launchers;  ``hydra/launcher=slurm|local|parallel``,
               optuna sweeper)                             ``hparams_search=...``
coco           pycocotools                                 ``data=coco``, ``task.metrics=[coco]``
export         onnx, onnxscript, onnxruntime               ``python -m dcn.export``, ``dcn.ops.onnx``
cuda12/cuda13  cupy                                        the CUDA kernels (``backend="cupy"``)
=============  ==========================================  ==========================================
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, Iterable, List, Mapping, Optional, Sequence

__all__ = ["MissingExtraError", "check_command_line", "check_config", "require"]

# extra -> the importable modules it provides
EXTRAS = {
    "wandb": ("wandb",),
    "tensorboard": ("tensorboard",),
    "sweeps": (
        "hydra_plugins.hydra_submitit_launcher",
        "hydra_plugins.hydra_joblib_launcher",
        "hydra_plugins.hydra_optuna_sweeper",
    ),
    "coco": ("pycocotools",),
    "export": ("onnx", "onnxscript", "onnxruntime"),
}


class MissingExtraError(ImportError):
    """A feature whose optional dependency is not installed (the message names the extra)."""


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, what: str, modules: Optional[Sequence[str]] = None) -> None:
    """Raise :class:`MissingExtraError` naming ``pip install 'dcn[<extra>]'`` unless the extra's
    modules (or ``modules``) can be imported. ``what`` says what needs it."""
    missing = [m for m in (modules or EXTRAS[extra]) if not _available(m)]
    if missing:
        raise MissingExtraError(
            f"{what} needs the optional dependency {', '.join(missing)}, which is not installed: "
            f"pip install 'dcn[{extra}]' (in a dcn checkout: pip install -e '.[{extra}]', or make install)"
        )


def _targets(node: Any) -> Iterable[str]:
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield str(node["_target_"])
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _targets(value)


def check_config(cfg: Mapping[str, Any]) -> None:
    """Before a run builds anything: every extra its config needs is installed."""
    targets: List[str] = list(_targets(cfg))
    if any(t.endswith("WandbLogger") for t in targets):
        require("wandb", "logger=wandb")
    if any(t.endswith("TensorBoardLogger") for t in targets):
        require("tensorboard", "logger=tensorboard")
    if any(t.endswith("CocoDetDataModule") for t in targets):
        require("coco", "data=coco")
    task = cfg.get("task") or {}
    if "coco" in list(task.get("metrics") or []):
        backend = task.get("coco_backend", "pycocotools")
        require("coco", "task.metrics=[coco]", [backend])


_SWEEP_CHOICES = {
    "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=local": "hydra_plugins.hydra_submitit_launcher",
    "hydra/launcher=parallel": "hydra_plugins.hydra_joblib_launcher",
    "hparams_search=": "hydra_plugins.hydra_optuna_sweeper",
}


def check_command_line(argv: Optional[Sequence[str]] = None) -> None:
    """Before Hydra composes (its own error would be a missing config group): a launcher or sweeper
    named on the command line has its plugin installed."""
    for arg in sys.argv[1:] if argv is None else argv:
        for prefix, module in _SWEEP_CHOICES.items():
            if arg.startswith(prefix):
                require("sweeps", arg, [module])
