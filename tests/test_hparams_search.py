"""hparams_search=classification_optuna: the Optuna sweeper's search space composes, and a 2-trial
study runs train.py and reports the best of the trials it ran, with its value and parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from train_runs import TINY_DIGITS, run_train_py

ROOT = Path(__file__).resolve().parents[1]
SEARCH = "hparams_search=classification_optuna"


def test_search_space_composes() -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "src" / "dcn" / "conf"), version_base="1.3"):
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
        SEARCH,
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "test=false",
        *TINY_DIGITS,
        # Two tiny trials tie on val/acc (both at chance), not on val/loss: minimise the loss (with
        # direction=minimize, as classification_optuna.yaml says for a loss), so that the choice of the
        # best trial below is really checked.
        "task.monitor=val/loss",
        "task.monitor_mode=min",
        "hydra.sweeper.direction=minimize",
    ]
    run_train_py(command, tmp_path)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"task.optimizer.lr", "task.optimizer.weight_decay"}

    # Each trial is a run of its own: it trained with the sampled parameters (its overrides) and
    # recorded its best val/loss, the value train.py returned to the sweeper.
    trials = []
    for i in range(2):
        record = json.loads((sweep / str(i) / "results.json").read_text())
        assert record["status"] == "completed" and record["best"]["monitor"] == "val/loss"
        overrides = yaml.safe_load((sweep / str(i) / ".hydra" / "overrides.yaml").read_text())
        sampled = {k: float(v) for k, v in (o.split("=", 1) for o in overrides) if k in best["best_params"]}
        optimizer = record["config"]["task"]["optimizer"]
        assert sampled["task.optimizer.lr"] == optimizer["lr"]
        assert sampled["task.optimizer.weight_decay"] == optimizer["weight_decay"]
        assert (
            1e-4 <= sampled["task.optimizer.lr"] <= 3e-2
            and 1e-6 <= sampled["task.optimizer.weight_decay"] <= 1e-2
        )
        trials.append((record["best"]["value"], sampled))
    assert trials[0][1] != trials[1][1] and trials[0][0] != trials[1][0]
    # The study's best: the lowest value of the trials run, with that trial's parameters.
    best_value, best_params = min(trials, key=lambda trial: trial[0])
    assert best["best_value"] == best_value and best["best_params"] == best_params
