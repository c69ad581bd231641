"""Resume and interruption: 2 epochs straight == 1 epoch + resume (RNGStateCheckpoint); SIGTERM or
Ctrl+C mid-epoch leaves a checkpoint (GracefulShutdown) from which the run resumes. Unusable
checkpoints: tests/test_checkpoints.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcn.checkpoints import load_checkpoint
from dcn.results import RunRecord

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
    "data.canvas_size=12", "data.digit_size=10", "data.batch_size=16",
    "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
    "task.scheduler.T_max=2",  # the same schedule whether a run is planned for 1 or 2 epochs
]  # fmt: skip


def _train(compose_train, run_dir: Path, overrides) -> Path:
    import train  # the repository's train.py (tests/conftest.py puts the root on sys.path)

    cfg = compose_train([*TINY, *overrides])
    cfg.paths.output_dir = str(run_dir)  # every ${paths.output_dir}/... follows
    record = RunRecord(run_dir, cfg)
    train.train(cfg, record)
    record.finish("completed")
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_two_epochs_straight_equal_one_epoch_then_resume(compose_train, tmp_path: Path) -> None:
    straight = _train(compose_train, tmp_path / "straight", ["trainer.max_epochs=2", "test=false"])
    first = _train(compose_train, tmp_path / "first", ["trainer.max_epochs=1", "test=false"])
    resumed = _train(compose_train, tmp_path / "resumed", ["trainer.max_epochs=2", "test=false", f"ckpt_path={first}"])

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 6)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # The first run's weights differ from both: resuming really continued training.
    assert not torch.equal(load_checkpoint(first)["state_dict"]["head.fc.weight"], a["state_dict"]["head.fc.weight"])


def _self_signal_override(signum: str, at_step: int):
    return [
        f"+callbacks.self_signal._target_=signal_at_step.SignalAtStep",
        f"+callbacks.self_signal.signum={signum}",
        f"+callbacks.self_signal.at_step={at_step}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_leaves_checkpoint_that_resumes(tmp_path: Path, signum: str) -> None:
    env = {**os.environ, "DCN_ROOT": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent)}
    run = tmp_path / "run"
    base = [sys.executable, str(ROOT / "train.py"), *TINY]
    done = subprocess.run(
        [*base, f"hydra.run.dir={run}", "trainer.max_epochs=2", *_self_signal_override(signum, 2)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "interrupted" and record["error"]["type"] == "SIGTERMException"
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 2)  # mid-epoch: 2 of 3 batches done
    if signum == "SIGINT":
        return  # the stop is the same as for SIGTERM from here on: resume once (below), not twice

    resumed = tmp_path / "resumed"
    done = subprocess.run(
        [*base, f"hydra.run.dir={resumed}", "trainer.max_epochs=2", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((resumed / "results.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 6
