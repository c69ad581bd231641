"""Hydra launchers from conf/hydra/launcher/: composition, and a real 2-job sweep via submitit's
local executor (each job its own process, as on SLURM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from train_runs import TINY_DIGITS, run_train_py

ROOT = Path(__file__).resolve().parents[1]


def _launcher(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "src" / "dcn" / "conf"), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=True).hydra.launcher
    finally:
        GlobalHydra.instance().clear()


def test_slurm_launcher_takes_tasks_gpus_and_nodes_from_the_trainer(monkeypatch) -> None:
    monkeypatch.setenv("SBATCH_PARTITION", "gpu-long")
    monkeypatch.setenv("SBATCH_ACCOUNT", "proj42")
    launcher = _launcher("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert (launcher.partition, launcher.account) == ("gpu-long", "proj42")
    launcher = _launcher("hydra/launcher=slurm", "hydra.launcher.partition=debug")
    assert (launcher.partition, launcher.nodes, launcher.tasks_per_node) == ("debug", 1, 1)


def test_local_launchers_compose() -> None:
    assert _launcher("hydra/launcher=local")._target_.endswith("LocalLauncher")
    assert _launcher("hydra/launcher=parallel").n_jobs == 2


@pytest.mark.slow
def test_two_job_sweep_through_submitit_local(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    command = [
        "-m",
        "hydra/launcher=local",
        f"hydra.sweep.dir={sweep}",
        "seed=0,1",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        *TINY_DIGITS,
    ]
    run_train_py(command, tmp_path)
    records = [json.loads((sweep / str(i) / "results.json").read_text()) for i in range(2)]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert [r["seed"] for r in records] == [0, 1]
    assert any((sweep / ".submitit").iterdir())  # the jobs went through submitit
