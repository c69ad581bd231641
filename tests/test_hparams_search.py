"""hparams_search=classification_optuna: the Optuna sweeper's search space composes, and a 2-trial
study runs train.py and reports the best parameters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
SEARCH = "hparams_search=classification_optuna"


def test_search_space_composes() -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[SEARCH], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and cfg.task.monitor_mode == "max"
    assert set(sweeper.params) == {"task.optimizer.lr", "task.optimizer.weight_decay"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


@pytest.mark.slow
def test_two_trial_study(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    command = [
        sys.executable, str(ROOT / "train.py"), SEARCH, f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "test=false", "data.canvas_size=12", "data.digit_size=10",
        "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "DCN_ROOT": str(tmp_path)},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"task.optimizer.lr", "task.optimizer.weight_decay"}
    assert 1e-4 <= best["best_params"]["task.optimizer.lr"] <= 3e-2
    values = [yaml.safe_load((sweep / str(i) / ".hydra" / "overrides.yaml").read_text()) for i in range(2)]
    assert all(any(o.startswith("task.optimizer.lr=") for o in v) for v in values)
    assert 0.0 <= best["best_value"] <= 1.0
