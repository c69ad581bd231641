"""What every dcn task shares: :class:`DcnTask`, the base of the four LightningModules.

* constructor checks (scheduler interval, monitor and its mode, class names against ``num_classes``);
* hyper-parameters made plain: ``self.hparams`` holds only Python scalars, lists and dicts (Hydra
  hands lists over as ``ListConfig``), so every checkpoint loads with ``torch.load(weights_only=True)``,
  which Lightning uses; the backbone lives in the state dict and the optimizer / scheduler factories
  in the run's config, not in ``hparams``;
* optimizer and scheduler from Hydra ``_partial_`` factories: ``configure_optimizers`` builds them from
  the task's :meth:`DcnTask.param_groups` (a group may carry ``lr_mult``, its learning rate relative to
  the optimizer's ``lr``) and :func:`~dcn.tasks.optimization.optimizer_config`;
* class names: :meth:`DcnTask.class_names` (configured, else the datamodule's, else the checkpoint's,
  else ``class_<k>``), saved in every checkpoint so a model rebuilt for inference names its classes;
* validation pictures: :meth:`DcnTask.validation_picture` draws the task's predictions on a few
  validation items; the :class:`~dcn.callbacks.ValidationPictures` callback decides when and sends the
  picture where the run's pictures go.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from dcn.tasks.class_names import CHECKPOINT_KEY, resolve_class_names
from dcn.tasks.optimization import check_interval, optimizer_config

__all__ = ["DcnTask", "MODEL_KEY", "SHARED_OPTIONS", "builder_options", "plain"]

MODEL_KEY = "dcn_model"  # checkpoint entry: what built the model (DcnTask.model_description)

MONITOR_MODES = ("max", "min")


def plain(value: Any) -> Any:
    """``value`` with OmegaConf containers, tuples and nested ones turned into lists and dicts."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# The options every task shares, with their defaults for a task whose constructor lacks one.
SHARED_OPTIONS: Dict[str, Any] = {
    "scheduler_interval": "epoch",
    "monitor": "val/loss",
    "monitor_mode": "min",
    "num_classes": None,
    "class_names": None,
    "num_val_images": 0,
}


def builder_options(
    builder: Callable[..., Any], options: Mapping[str, Any], taken: Sequence[str]
) -> Dict[str, Any]:
    """``options`` checked against ``builder``'s keyword parameters (those not in ``taken``, which
    the task passes itself) and completed with their defaults.

    A task that builds its network with ``builder`` takes the builder's options as ``**kwargs``
    (as torchvision's model builders pass theirs to the model class): the builder's signature is
    the one place that names and defaults them. Completing them here records every option, default
    or not, in the task's hyper-parameters, so a checkpoint says exactly what it was built with.
    """
    params = {
        name: p.default
        for name, p in inspect.signature(builder).parameters.items()
        if name not in taken and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"unknown task option(s) {unknown}; the task's own options are its arguments, and its network "
            f"({builder.__module__}.{builder.__qualname__}) takes: {', '.join(params)}"
        )
    return {name: plain(options.get(name, default)) for name, default in params.items()}


def _check_shared_options(hp: Any) -> None:
    check_interval(hp.scheduler_interval)
    monitor, num_val_images = hp.monitor, hp.num_val_images
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"task.monitor must name a logged metric such as 'val/loss', got {monitor!r}")
    if hp.monitor_mode not in MONITOR_MODES:
        raise ValueError(f"task.monitor_mode must be 'max' or 'min', got {hp.monitor_mode!r}")
    if isinstance(num_val_images, bool) or not isinstance(num_val_images, int) or num_val_images < 0:
        raise ValueError(f"task.num_val_images must be an integer >= 0, got {num_val_images!r}")
    if hp.class_names is not None:
        if hp.num_classes is None:
            raise ValueError("task.class_names is set but the task has no classes (num_classes is None)")
        if len(hp.class_names) != hp.num_classes:
            raise ValueError(
                f"task.class_names lists {len(hp.class_names)} names for num_classes={hp.num_classes}"
            )


class DcnTask(L.LightningModule):
    """Base of dcn's task modules (see the module docstring).

    Args:
        optimizer: ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_`` optimizer).
        scheduler: optional ``optimizer -> LRScheduler`` (Hydra ``_partial_``).

    Subclasses call ``super().__init__(optimizer, scheduler)`` first: it records every constructor
    argument of the subclass (except ``backbone``, ``optimizer``, ``scheduler``) as plain
    hyper-parameters, then checks the options all tasks share (:data:`SHARED_OPTIONS`; a subclass
    without one gets the default) from that record, so a subclass lists them once, in its own
    signature:

    * ``scheduler_interval``: the scheduler steps every "epoch" or "step";
    * ``monitor``, ``monitor_mode``: the validation metric that selects the best checkpoint (and
      drives ``ReduceLROnPlateau``) and whether higher ("max") or lower ("min") is better;
    * ``num_classes``: classes the task predicts (None: class-agnostic, e.g. tracking);
    * ``class_names``: names for tables and pictures (None: see :meth:`class_names`);
    * ``num_val_images``: validation items drawn per picture (0: no pictures).
    """

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Optional[Callable[..., Any]] = None,
    ) -> None:
        super().__init__()
        # Collects the arguments of every subclass __init__ up the call chain (Lightning walks the
        # frames), then makes them plain: checkpoints must load with weights_only=True.
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"], logger=False)
        for key in list(self.hparams):
            self.hparams[key] = plain(self.hparams[key])
        for key, default in SHARED_OPTIONS.items():
            self.hparams.setdefault(key, default)
        _check_shared_options(self.hparams)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.checkpoint_class_names: Optional[List[str]] = None

    # -- optimisation ------------------------------------------------------------------------------
    def param_groups(self) -> List[Dict[str, Any]]:
        """Parameter groups for the optimizer: ``{"params": [...], "name": str, "lr_mult": float}``
        (``lr_mult`` optional, 1 by default). Default: every trainable parameter in one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "name": "all"}]

    def configure_optimizers(self) -> Dict[str, Any]:
        groups = [dict(g) for g in self.param_groups() if g["params"]]
        multipliers = [float(g.pop("lr_mult", 1.0)) for g in groups]
        optimizer = self.optimizer_factory(params=groups)
        for group, mult in zip(optimizer.param_groups, multipliers):
            group["lr"] *= mult
        return optimizer_config(
            optimizer, self.scheduler_factory, self.hparams.scheduler_interval, self, self.hparams.monitor
        )

    # -- class names ---------------------------------------------------------------------------------
    def class_names(self) -> List[str]:
        """Configured names, else the datamodule's, else the checkpoint's, else ``class_<k>``
        (empty for a class-agnostic task)."""
        if self.hparams.get("num_classes") is None:
            return []
        return resolve_class_names(self)

    def model_description(self) -> Dict[str, Any]:
        """What built this model: task and backbone classes, the backbone's architecture and deform
        settings. Saved in every checkpoint (``"dcn_model"``), so a checkpoint used with the wrong
        config is named for what it is (:func:`dcn.checkpoints.check_state_dict_fits`)."""
        backbone = getattr(self, "backbone", None)
        options = getattr(backbone, "deform_options", None)
        return {
            "task": f"{type(self).__module__.split('.module')[0]}.{type(self).__name__}",
            "backbone": type(backbone).__name__ if backbone is not None else None,
            "arch": getattr(backbone, "arch", None),
            "deform": plain(dataclasses.asdict(options)) if dataclasses.is_dataclass(options) else None,
        }

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[MODEL_KEY] = self.model_description()
        if self.hparams.get("num_classes") is not None:
            checkpoint[CHECKPOINT_KEY] = self.class_names()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        names = checkpoint.get(CHECKPOINT_KEY)
        self.checkpoint_class_names = [str(n) for n in names] if names is not None else None

    # -- pictures ------------------------------------------------------------------------------------
    def validation_picture(self, items: Sequence[Any]) -> Any:
        """A picture of the model's predictions on ``items`` (validation dataset items, as the
        dataset returns them): a matplotlib figure or an ``uint8`` array ``(H, W, 3)``; None when the
        task draws none. Called by :class:`~dcn.callbacks.ValidationPictures` in eval mode without
        gradients."""
        return None
