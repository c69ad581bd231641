"""Re-test a finished run: ``python -m dcn.eval <run dir | checkpoint> [data overrides] [--split test|val]``
(``dcn-eval``).

The run's task is rebuilt from its own saved config and checkpoint (:mod:`dcn.trained_task`: weights-only
loading, allow-listed classes), its datamodule likewise, and the chosen split is tested. Overrides change
the data only, with Hydra's syntax: a key (``data.root=/data/VOC``, ``data.batch_size=8``) or another
data config (``data=voc_det data.root=...``), e.g. to test a model trained on synthetic data on a real
dataset of the same format. Writes ``eval.json`` beside the run's ``results.json`` (``eval.1.json``, ...
when one exists: nothing is overwritten) and prints the same summary as ``train.py``.

Examples::

    python -m dcn.eval logs/default/runs/<run>                       # the test split, as in results.json
    python -m dcn.eval logs/frcnn_synthetic/runs/<run> data=voc_det data.root=/data/VOCdevkit --split val
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from dcn.console import run_parser

__all__ = ["EvalError", "apply_data_overrides", "evaluate", "main"]

log = logging.getLogger("dcn")
SPLITS = ("test", "val")
EVAL_FILE = "eval.json"


class EvalError(ValueError):
    """Bad arguments to dcn.eval (the message says which)."""


def apply_data_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``cfg`` with Hydra-style data overrides applied (a copy): ``data=<name>`` replaces the data group
    by ``conf/data/<name>.yaml`` (composed as train.py would), ``data.<key>=<value>`` sets a key."""
    cfg = cfg.copy()
    choice = [o for o in overrides if o.startswith("data=")]
    keys = [o for o in overrides if o.startswith("data.")]
    other = [o for o in overrides if o not in choice + keys]
    if other:
        raise EvalError(f"dcn.eval takes data overrides only (data=<name>, data.<key>=<value>), got {other}")
    if choice:
        from hydra import compose, initialize_config_module

        from dcn import resolvers

        resolvers.register()
        with initialize_config_module("dcn.conf", version_base="1.3"):
            composed = compose("train", overrides=choice)
        with open_dict(cfg):  # its ${paths...} interpolations resolve against the run's own paths
            cfg.data = composed.data
    for override in keys:
        key, sep, value = override.partition("=")
        if not sep:
            raise EvalError(f"override {override!r} must be key=value")
        with open_dict(cfg):  # the value as YAML reads it: numbers, lists, null
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, merge=True)
    return cfg


def _next_free(path: Path) -> Path:
    if not path.exists():
        return path
    n = 1
    while path.with_name(f"{path.stem}.{n}{path.suffix}").exists():
        n += 1
    return path.with_name(f"{path.stem}.{n}{path.suffix}")


def evaluate(
    run: Path,
    overrides: Sequence[str] = (),
    split: str = "test",
    config: Optional[Path] = None,
    accelerator: str = "auto",
) -> Dict[str, Any]:
    """Test ``run`` (a run directory or a checkpoint) on ``split``; write and return the eval record."""
    import lightning as L

    from dcn.results import format_summary
    from dcn.trained_task import checkpoint_of, find_run_config, load_datamodule, load_trained_task

    if split not in SPLITS:
        raise EvalError(f"--split must be one of {list(SPLITS)}, got {split!r}")
    checkpoint = checkpoint_of(run)
    task, cfg = load_trained_task(checkpoint, config)
    source = str(config) if config is not None else str(find_run_config(checkpoint))
    cfg = apply_data_overrides(cfg, list(overrides))
    start = time.perf_counter()
    datamodule = load_datamodule(cfg, source)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=str(checkpoint.resolve().parent.parent),
    )
    run_test = trainer.test if split == "test" else trainer.validate
    results = run_test(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    run_dir = checkpoint.resolve().parent.parent
    record = {
        "checkpoint": str(checkpoint.resolve()),
        "run_dir": str(run_dir),
        "split": split,
        "overrides": list(overrides),
        "data_config": OmegaConf.to_container(cfg.data, resolve=True),
        "metrics": metrics,
        "timing": {"eval_s": round(time.perf_counter() - start, 3)},
    }
    out = _next_free(run_dir / EVAL_FILE)
    out.write_text(json.dumps(record, indent=2) + "\n")
    record["path"] = str(out)
    log.info(
        format_summary(
            f"dcn eval of {run} ({split} split)",
            metrics,
            [("run dir", str(run_dir)), ("checkpoint", str(checkpoint)), ("written", str(out))],
        )
    )
    return record


def parser() -> argparse.ArgumentParser:
    p = run_parser("python -m dcn.eval", __doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="data overrides: data=<name>, data.<key>=<value>")
    p.add_argument("--split", default="test", choices=SPLITS, help="the split to test (default: test)")
    p.add_argument(
        "--config", type=Path, default=None, help="the run's config (default: found next to the run)"
    )
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    return p


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from dcn.console import configure_logging

    configure_logging()
    args = parser().parse_intermixed_args(argv)  # data overrides may come before or after the options
    return evaluate(args.run, args.overrides, args.split, args.config, args.accelerator)


def cli() -> None:
    """The ``dcn-eval`` command: errors in the user's input as one line, exit status 2."""
    from dcn.checkpoints import CheckpointError

    try:
        main()
    except (FileNotFoundError, EvalError, CheckpointError, TypeError, ValueError, ImportError) as error:
        raise SystemExit(f"python -m dcn.eval: error: {error}") from None


if __name__ == "__main__":
    cli()
