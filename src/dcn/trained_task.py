"""Rebuild the task module of a finished ``train.py`` run from its config and load a checkpoint into it.

The command-line tools over trained models (``python -m dcn.viz``, ``dcn.track``, ``dcn.detect``) share
this: a checkpoint ``<run dir>/checkpoints/<name>.ckpt`` is found with its run's config
(``<run dir>/results.json``, else ``<run dir>/.hydra/config.yaml``, or a config file given by hand);
backbone and task are instantiated from it without any initial weights (no download, no pretrained
file: the checkpoint holds every weight); the checkpoint is checked against the model (an error
naming the file and the mismatching keys) and loaded; the task's ``on_load_checkpoint`` hook runs as
it would under Lightning (class names saved with the checkpoint, for example).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Type, Union

from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = ["checkpoint_of", "find_run_config", "load_datamodule", "load_trained_task", "read_run_config"]

ConfigSource = Union[None, str, Path, Mapping[str, Any], DictConfig]


def checkpoint_of(path: Union[str, Path]) -> Path:
    """The checkpoint meant by ``path``: itself if it is a file; for a run directory its best checkpoint
    (``results.json``), else ``checkpoints/last.ckpt``, else its newest ``checkpoints/*.ckpt``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no such run directory or checkpoint: {path}")
    results = path / "results.json"
    if results.is_file():
        try:
            recorded = json.loads(results.read_text())
        except ValueError:
            recorded = {}
        for candidate in ((recorded.get("best") or {}).get("checkpoint"), recorded.get("last_checkpoint")):
            if candidate and Path(candidate).is_file():
                return Path(candidate)
    folder = path / "checkpoints"
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{path} holds no checkpoint (looked in results.json and {folder}/*.ckpt)")
    return found[-1]


def load_datamodule(cfg: DictConfig, source: str, num_workers: Optional[int] = None) -> Any:
    """The run's datamodule rebuilt from its config's ``data`` group (allow-listed ``_target_``s only:
    the config may come from anyone), prepared (downloads / generation) and ready for ``setup``.
    ``num_workers`` overrides the loader workers when the config has that key."""
    import hydra
    from omegaconf import open_dict

    from dcn.instantiate import check_targets

    check_targets(cfg, source, keys=["data"])
    data = cfg.data.copy()
    if num_workers is not None and "num_workers" in data:
        with open_dict(data):
            data.num_workers = num_workers
    datamodule = hydra.utils.instantiate(data)
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    return datamodule


def find_run_config(checkpoint: Path) -> Path:
    """The config file of the run that wrote ``checkpoint`` (``<run dir>/checkpoints/<file>.ckpt``):
    ``<run dir>/results.json`` (resolved config), else ``<run dir>/.hydra/config.yaml``."""
    run_dir = Path(checkpoint).resolve().parent.parent
    candidates = (run_dir / "results.json", run_dir / ".hydra" / "config.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no run config next to {checkpoint} (looked for {candidates[0]} and {candidates[1]}); "
        "the checkpoint must sit in <run dir>/checkpoints/ of a train.py run, or pass "
        "--config <run dir>/.hydra/config.yaml"
    )


def read_run_config(path: Path) -> DictConfig:
    """A run's config from ``results.json`` (its ``"config"``) or a Hydra ``config.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run config not found: {path}")
    if path.suffix == ".json":
        try:
            config = json.loads(path.read_text())["config"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a dcn results.json (no readable 'config'): {error}") from error
        cfg = OmegaConf.create(config)
    else:
        cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or "task" not in cfg or "backbone" not in cfg:
        raise ValueError(f"{path} is not a dcn run config (expected top-level 'task' and 'backbone' keys)")
    return cfg


def _as_config(config: ConfigSource, checkpoint: Path) -> DictConfig:
    if config is None:
        return read_run_config(find_run_config(checkpoint))
    if isinstance(config, (str, Path)):
        return read_run_config(Path(config))
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    if "task" not in cfg or "backbone" not in cfg:
        raise ValueError("a run config needs top-level 'task' and 'backbone' keys")
    return cfg


def _build(cfg: DictConfig, in_channels: int, num_classes: Optional[int]) -> Tuple[nn.Module, nn.Module]:
    import hydra

    # The weights come from the checkpoint: never download or read the backbone's initial weights.
    backbone = hydra.utils.instantiate(cfg.backbone, in_channels=in_channels, pretrained=None)
    task = hydra.utils.instantiate(cfg.task, backbone=backbone, num_classes=num_classes)
    return backbone, task


def _stem_channels(task: nn.Module, backbone: nn.Module, state: Mapping[str, Any]) -> Optional[int]:
    """Input channels of the saved stem conv, found under the backbone's own prefix in ``task``."""
    stem = getattr(backbone, "stem_weight_key", None)
    prefix = next((name for name, module in task.named_modules() if module is backbone), None)
    if stem is None or prefix is None:
        return None
    weight = state.get(f"{prefix}.{stem}" if prefix else stem)
    return int(weight.shape[1]) if weight is not None and weight.dim() == 4 else None


def load_trained_task(
    checkpoint: Union[str, Path],
    config: ConfigSource = None,
    task_type: Optional[Type[nn.Module]] = None,
    device: str = "cpu",
) -> Tuple[nn.Module, DictConfig]:
    """Rebuild a run's task module and load ``checkpoint`` into it.

    Args:
        checkpoint: a Lightning checkpoint written by ``train.py``.
        config: the run's config: None finds it next to the checkpoint (:func:`find_run_config`); a
            path to a ``results.json`` or ``config.yaml``; or the config itself.
        task_type: when given, the run's task must build an instance of it (e.g. ``DetectionTask``).
        device: where the model goes.

    Returns:
        ``(task, config)``: the task in eval mode on ``device``, and the run's config.

    Raises:
        FileNotFoundError: no checkpoint, or no config where it was looked for.
        dcn.checkpoints.CheckpointError: an unreadable checkpoint, or weights that do not fit the model.
        ValueError / TypeError: a config that is not a dcn run's, or a task of another type.
    """
    from dcn import resolvers
    from dcn.checkpoints import check_state_dict_fits, load_checkpoint
    from dcn.instantiate import check_targets

    checkpoint = Path(checkpoint)
    resolvers.register()  # a Hydra config.yaml may use dcn's resolvers
    cfg = _as_config(config, checkpoint)
    if isinstance(config, (str, Path)):
        source = str(config)
    else:
        source = str(find_run_config(checkpoint)) if config is None else "the given run config"
    # Only the groups rebuilt here, and only allow-listed classes: the file may come from anyone.
    check_targets(cfg, source, keys=["backbone", "task"])
    target = str(cfg.task.get("_target_", ""))
    if task_type is not None and target.rsplit(".", 1)[-1] != task_type.__name__:
        raise TypeError(f"the run's task is {target or '?'}, not {task_type.__module__}.{task_type.__name__}")
    saved = load_checkpoint(checkpoint)
    # train.py takes in_channels and num_classes from the datamodule: read them back from what was saved.
    num_classes = (saved.get("hyper_parameters") or {}).get("num_classes")
    in_channels = int(cfg.backbone.get("in_channels", 3) or 3)
    backbone, task = _build(cfg, in_channels, num_classes)
    saved_channels = _stem_channels(task, backbone, saved["state_dict"])
    if saved_channels is not None and saved_channels != in_channels:
        backbone, task = _build(cfg, saved_channels, num_classes)
    if task_type is not None and not isinstance(task, task_type):
        raise TypeError(f"the run's task built a {type(task).__name__}, not a {task_type.__name__}")
    check_state_dict_fits(checkpoint, saved, task)
    task.load_state_dict(saved["state_dict"])
    if hasattr(task, "on_load_checkpoint"):
        task.on_load_checkpoint(saved)
    return task.to(device).eval(), cfg
