"""trainer=ddp_cpu through train.py: two gloo processes, one run directory, one results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_runs import TINY_DIGITS, run_train_py


@pytest.mark.slow
def test_ddp_cpu_two_processes_write_one_results_json(tmp_path: Path) -> None:
    command = [
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.batch_size=16",
        *TINY_DIGITS,
    ]
    done = run_train_py(command, tmp_path)

    (run_dir,) = (tmp_path / "logs" / "default" / "runs").iterdir()  # rank 1 did not make its own
    assert sorted(p.name for p in run_dir.glob("results*.json")) == ["results.json"]
    assert (run_dir / "train_ddp_process_1.log").is_file()  # Lightning's second process ran here
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed"
    assert record["trainer"]["world_size"] == 2 and record["trainer"]["devices"] == 2
    # 2 batches of 16 per process and step: the checkpoint's step count is per process.
    assert record["global_step"] == 2
    assert 0.0 <= record["metrics"]["test/acc"] <= 1.0
    assert done.stdout.count("dcn run completed") == 1  # rank 0 alone prints the summary
