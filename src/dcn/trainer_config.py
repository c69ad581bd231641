"""Check the ``trainer`` config's common keys before the Trainer is built.

Lightning answers ``trainer.max_epochs=abc`` with a bare ``AssertionError`` from deep inside its
constructor; :func:`check_trainer_config` names the key, the value and what it must be instead.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

__all__ = ["TrainerConfigError", "check_trainer_config"]


class TrainerConfigError(ValueError):
    """A trainer setting of the wrong type or range (the message names the key)."""


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fraction_or_count(v: Any) -> bool:  # limit_*_batches, overfit_batches, val_check_interval
    return (_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


# key -> (check, what it must be)
_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "max_epochs": (lambda v: _int(v) and v >= -1, "an integer >= -1 (-1: no limit)"),
    "min_epochs": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "max_steps": (lambda v: _int(v) and v >= -1, "an integer >= -1 (-1: no limit)"),
    "min_steps": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "check_val_every_n_epoch": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "log_every_n_steps": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "accumulate_grad_batches": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "num_sanity_val_steps": (lambda v: _int(v) and v >= -1, "an integer >= -1"),
    "num_nodes": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "reload_dataloaders_every_n_epochs": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "limit_train_batches": (_fraction_or_count, "a number of batches (int) or a fraction in [0, 1]"),
    "limit_val_batches": (_fraction_or_count, "a number of batches (int) or a fraction in [0, 1]"),
    "limit_test_batches": (_fraction_or_count, "a number of batches (int) or a fraction in [0, 1]"),
    "limit_predict_batches": (_fraction_or_count, "a number of batches (int) or a fraction in [0, 1]"),
    "overfit_batches": (_fraction_or_count, "a number of batches (int) or a fraction in [0, 1]"),
    "val_check_interval": (
        lambda v: _number(v) and v > 0,
        "a positive number (batches, or a fraction of an epoch)",
    ),
    "gradient_clip_val": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "gradient_clip_algorithm": (lambda v: v in ("norm", "value"), "'norm' or 'value'"),
    "fast_dev_run": (
        lambda v: isinstance(v, bool) or (_int(v) and v >= 0),
        "true, false or a number of batches",
    ),
    "deterministic": (lambda v: isinstance(v, bool) or v == "warn", "true, false or 'warn'"),
    "benchmark": (lambda v: isinstance(v, bool), "true or false"),
    "detect_anomaly": (lambda v: isinstance(v, bool), "true or false"),
    "sync_batchnorm": (lambda v: isinstance(v, bool), "true or false"),
    "precision": (
        lambda v: (
            str(v)
            in {
                "64",
                "32",
                "16",
                "bf16",
                "64-true",
                "32-true",
                "16-true",
                "bf16-true",
                "16-mixed",
                "bf16-mixed",
                "transformer-engine",
            }
        ),
        "one of 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true",
    ),
    "accelerator": (lambda v: isinstance(v, str) and bool(v), "a name: auto, cpu, gpu, cuda, mps"),
    "devices": (
        lambda v: (
            (_int(v) and v >= -1)
            or isinstance(v, str)
            or (isinstance(v, (list, tuple)) and all(_int(i) for i in v))
        ),
        "a count (-1: all), 'auto', or a list of device ids",
    ),
}


def check_trainer_config(trainer: Mapping[str, Any], key: str = "trainer") -> None:
    """Raise :class:`TrainerConfigError` for the first common key whose value has the wrong type or
    range (null values mean Lightning's default and pass)."""
    for name, (ok, expected) in _RULES.items():
        if name not in trainer:
            continue
        value = trainer[name]
        if value is None or ok(value):
            continue
        raise TrainerConfigError(f"{key}.{name} must be {expected}, got {value!r} ({type(value).__name__})")
