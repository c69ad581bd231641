"""Resume and interruption: a run stopped and resumed, at an epoch end or by SIGTERM mid-epoch (once or
several times), ends with the state of the run that never stopped, bit for bit (RNGStateCheckpoint,
GracefulShutdown); with loader workers the interrupted epoch keeps its shuffle; an older mid-epoch
checkpoint resumes with a warning; SIGTERM or Ctrl+C through train.py records the stop and resumes.
Unusable checkpoints: tests/test_checkpoints.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from train_runs import TINY_DIGITS

from dcn.checkpoints import load_checkpoint
from dcn.results import RunRecord

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.batch_size=16",
    *TINY_DIGITS,
    "task.scheduler.T_max=2",  # the same schedule whether a run is planned for 1 or 2 epochs
]


def _train(compose_train, run_dir: Path, overrides, stopped: bool = False) -> Path:
    """Train in this process; ``stopped``: the run must end by a signal (SIGTERMException out of
    fit, as train.py sees it). Returns the run's last.ckpt."""
    import train  # the repository's train.py (tests/conftest.py puts the root on sys.path)

    cfg = compose_train([*TINY, *overrides])
    cfg.paths.output_dir = str(run_dir)  # every ${paths.output_dir}/... follows
    record = RunRecord(run_dir, cfg)
    if stopped:
        with pytest.raises(SIGTERMException):
            train.train(cfg, record)
        record.finish("interrupted")
    else:
        train.train(cfg, record)
        record.finish("completed")
    return run_dir / "checkpoints" / "last.ckpt"


def _assert_same_training_state(expected: Path, actual: Path) -> None:
    """Bit-equal progress, weights and buffers (BatchNorm statistics), optimizer state (momentum) and
    LR schedule."""
    a, b = load_checkpoint(expected), load_checkpoint(actual)
    assert (b["epoch"], b["global_step"]) == (a["epoch"], a["global_step"])
    assert b["state_dict"].keys() == a["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    (opt_a,), (opt_b,) = a["optimizer_states"], b["optimizer_states"]
    assert opt_b["param_groups"] == opt_a["param_groups"]
    torch.testing.assert_close(opt_b["state"], opt_a["state"], rtol=0, atol=0)
    assert b["lr_schedulers"] == a["lr_schedulers"]


@pytest.mark.slow
def test_two_epochs_straight_equal_one_epoch_then_resume(compose_train, tmp_path: Path) -> None:
    straight = _train(compose_train, tmp_path / "straight", ["trainer.max_epochs=2", "test=false"])
    first = _train(compose_train, tmp_path / "first", ["trainer.max_epochs=1", "test=false"])
    resumed = _train(
        compose_train, tmp_path / "resumed", ["trainer.max_epochs=2", "test=false", f"ckpt_path={first}"]
    )

    assert (load_checkpoint(straight)["epoch"], load_checkpoint(straight)["global_step"]) == (1, 6)
    _assert_same_training_state(straight, resumed)
    # The first run's weights differ from both: resuming really continued training.
    straight_fc = load_checkpoint(straight)["state_dict"]["head.fc.weight"]
    assert not torch.equal(load_checkpoint(first)["state_dict"]["head.fc.weight"], straight_fc)


def _self_signal_override(signum: str, at_step: int):
    return [
        "+callbacks.self_signal._target_=signal_at_step.SignalAtStep",
        f"+callbacks.self_signal.signum={signum}",
        f"+callbacks.self_signal.at_step={at_step}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("stops", [(2,), (4,), (1, 2, 4)], ids=["epoch0", "epoch1", "three_stops"])
def test_sigterm_mid_epoch_then_resume_equals_the_run_that_never_stopped(
    compose_train, tmp_path: Path, stops
):
    """Each stop: SIGTERM after that global step (3 batches per epoch, so mid-epoch), then resume from
    its last.ckpt. (1, 2, 4): stopped twice in one epoch (the second time in a resumed epoch), then in
    the next one. The rest of an interrupted epoch must get the batches, and random deformations,
    the uninterrupted run got: no batch repeated or skipped. RandomDraws stands in for dropout: the
    generators must continue from where the training steps, not only the data loading, left them."""
    config = ["trainer.max_epochs=2", "test=false", "+callbacks.draws._target_=training_probes.RandomDraws"]
    straight = _train(compose_train, tmp_path / "straight", config)
    ckpt = None
    for i, step in enumerate(stops):
        resume = [f"ckpt_path={ckpt}"] if ckpt else []
        overrides = [*config, *resume, *_self_signal_override("SIGTERM", step)]
        ckpt = _train(compose_train, tmp_path / f"stop{i}", overrides, stopped=True)
        assert load_checkpoint(ckpt)["global_step"] == step
    resumed = _train(compose_train, tmp_path / "resumed", [*config, f"ckpt_path={ckpt}"])
    _assert_same_training_state(straight, resumed)


@pytest.mark.slow
def test_mid_epoch_checkpoint_without_epoch_start_states_resumes_with_a_warning(
    compose_train, tmp_path: Path
) -> None:
    # A mid-epoch checkpoint written before RNGStateCheckpoint kept "epoch_start": the run resumes as
    # Lightning alone would (a new shuffle for the rest of the epoch), and says so.
    config = ["trainer.max_epochs=1", "test=false"]
    ckpt = _train(
        compose_train, tmp_path / "stop", [*config, *_self_signal_override("SIGTERM", 1)], stopped=True
    )
    checkpoint = torch.load(ckpt, weights_only=True)
    del checkpoint["callbacks"]["RNGStateCheckpoint"]["epoch_start"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    with pytest.warns(
        UserWarning, match="resuming mid-epoch .1 of 3 batches done.* no epoch-start generator states"
    ):
        resumed = _train(compose_train, tmp_path / "resumed", [*config, f"ckpt_path={old}"])
    assert load_checkpoint(resumed)["global_step"] == 3


@pytest.mark.slow
def test_with_loader_workers_the_interrupted_epoch_keeps_its_shuffle(compose_train, tmp_path: Path) -> None:
    """data.num_workers > 0: the workers' generators are not in checkpoints, so random deformations
    after a resume differ from the uninterrupted run's (docs/experiments.md). The rest of the
    interrupted epoch still comes in the order it would have (each sample once per epoch), also in
    the first epoch of a run, whose persistent workers' iterator the resumed run makes differently."""

    def record(name: str):
        return [
            "+callbacks.record._target_=training_probes.RecordTargets",
            f"+callbacks.record.path={tmp_path / name}",
        ]

    config = ["trainer.max_epochs=1", "test=false", "data.num_workers=1"]
    _train(compose_train, tmp_path / "straight", [*config, *record("straight.jsonl")])
    stop = [*config, *record("stopped.jsonl"), *_self_signal_override("SIGTERM", 1)]
    ckpt = _train(compose_train, tmp_path / "stop", stop, stopped=True)
    _train(compose_train, tmp_path / "resumed", [*config, *record("stopped.jsonl"), f"ckpt_path={ckpt}"])
    straight, stopped = (
        (tmp_path / name).read_text().splitlines() for name in ("straight.jsonl", "stopped.jsonl")
    )
    assert len(straight) == 3 and stopped == straight


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_leaves_checkpoint_that_resumes(tmp_path: Path, signum: str) -> None:
    env = {**os.environ, "DCN_ROOT": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent)}
    run = tmp_path / "run"
    base = [sys.executable, str(ROOT / "train.py"), *TINY]
    done = subprocess.run(
        [*base, f"hydra.run.dir={run}", "trainer.max_epochs=2", *_self_signal_override(signum, 2)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "interrupted" and record["error"]["type"] == "SIGTERMException"
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 2)  # mid-epoch: 2 of 3 batches done
    if signum == "SIGINT":
        return  # the stop is the same as for SIGTERM from here on: resume once (below), not twice

    resumed = tmp_path / "resumed"
    done = subprocess.run(
        [
            *base,
            f"hydra.run.dir={resumed}",
            "trainer.max_epochs=2",
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((resumed / "results.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 6
