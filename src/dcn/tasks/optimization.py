"""The optimizer / scheduler wiring every task module shares (``configure_optimizers``' return value).

Tasks take ``optimizer`` and ``scheduler`` as Hydra ``_partial_`` factories. A scheduler whose
constructor has a ``total_iters`` argument that the config left unset (``PolynomialLR``, the "poly"
schedule; ``LinearLR``) gets the run's length: total optimizer steps for ``interval="step"``,
``trainer.max_epochs`` for ``interval="epoch"``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

import lightning as L
import torch

__all__ = ["INTERVALS", "check_interval", "optimizer_config", "wants_total_iters"]

INTERVALS = ("epoch", "step")


def check_interval(interval: str) -> None:
    if interval not in INTERVALS:
        raise ValueError(f"task.scheduler_interval must be 'epoch' or 'step', got {interval!r}")


def wants_total_iters(factory: Callable[..., Any]) -> bool:
    """True for a scheduler factory (class or functools.partial) whose constructor has a
    ``total_iters`` argument that the config did not set."""
    func = getattr(factory, "func", factory)
    if "total_iters" in getattr(factory, "keywords", {}):
        return False
    try:
        return "total_iters" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def optimizer_config(
    optimizer: torch.optim.Optimizer,
    scheduler_factory: Optional[Callable[..., Any]],
    interval: str,
    module: L.LightningModule,
    monitor: Optional[str] = None,
) -> Dict[str, Any]:
    """``{"optimizer": ..., "lr_scheduler": {"scheduler", "interval"[, "monitor"]}}`` for Lightning
    (no ``lr_scheduler`` without a factory). ``module.trainer`` is read only for a scheduler that
    needs ``total_iters``; ``monitor`` is what ReduceLROnPlateau reads."""
    check_interval(interval)
    if scheduler_factory is None:
        return {"optimizer": optimizer}
    kwargs = {}
    if wants_total_iters(scheduler_factory):
        trainer = module.trainer
        steps = trainer.max_epochs if interval == "epoch" else trainer.estimated_stepping_batches
        kwargs["total_iters"] = int(steps)
    scheduler = scheduler_factory(optimizer=optimizer, **kwargs)
    config: Dict[str, Any] = {"scheduler": scheduler, "interval": interval}
    if monitor is not None:
        config["monitor"] = monitor
    return {"optimizer": optimizer, "lr_scheduler": config}
