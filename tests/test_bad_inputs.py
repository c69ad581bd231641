"""train.py under bad input: wrong config values, a reused or unwritable run directory, a full disk.
Each gives a clear error naming the key, the directory or the file, and no user file is lost."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.canvas_size=12",
    "data.digit_size=10",
    "task.num_val_images=0",
]


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.max_epochs=abc", r"trainer.max_epochs must be an integer >= -1 .*got 'abc' \(str\)"),
        (
            "trainer.limit_train_batches=1.5",
            r"trainer.limit_train_batches must be a number of batches .*got 1.5",
        ),
        ("trainer.precision=half", r"trainer.precision must be one of .*got 'half'"),
        ("trainer.fast_dev_run=maybe", r"trainer.fast_dev_run must be true, false or a number of batches"),
        ("trainer.devices=[a]", r"trainer.devices must be a count"),
    ],
)
def test_bad_trainer_values_are_named_before_anything_is_built(compose_train, override, message):
    import train
    from dcn.results import RunRecord
    from dcn.trainer_config import TrainerConfigError

    cfg = compose_train([override])
    with pytest.raises(TrainerConfigError, match=message):
        train.train(cfg, RunRecord(cfg.paths.output_dir, cfg))


def test_every_documented_trainer_key_is_settable(compose_train):
    """trainer.fast_dev_run, limit_*_batches, ... are in the config: no '+' and no 'not in struct'."""
    cfg = compose_train(
        [
            "trainer.fast_dev_run=true",
            "trainer.limit_train_batches=3",
            "trainer.max_steps=5",
            "trainer.gradient_clip_val=1.0",
            "trainer.accumulate_grad_batches=2",
        ]
    )
    assert cfg.trainer.fast_dev_run is True and cfg.trainer.limit_train_batches == 3


def _run_train(args, cwd, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
        timeout=600,
    )


def _digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_reused_run_directory_is_refused_and_left_untouched(tmp_path):
    run_dir = tmp_path / "my_run"
    first = _run_train([f"hydra.run.dir={run_dir}", *TINY], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _digest(run_dir)
    assert "results.json" in before and any(k.startswith("checkpoints/") for k in before)

    second = _run_train([f"hydra.run.dir={run_dir}", *TINY], tmp_path)
    assert second.returncode == 2
    message = second.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: hydra.run.dir={run_dir} already holds another run's files")
    assert "ckpt_path=" in message and "leave hydra.run.dir unset" in message
    assert _digest(run_dir) == before  # nothing written, not even Hydra's .hydra/ files

    # The way out that keeps the directory: resume from its checkpoint.
    resumed = _run_train(
        [
            f"hydra.run.dir={run_dir}",
            f"ckpt_path={run_dir}/checkpoints/last.ckpt",
            *TINY,
            "trainer.max_epochs=2",
        ],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    assert (run_dir / "results.1.json").is_file()  # the first run's record, kept


def test_unwritable_output_root_is_one_line(tmp_path, monkeypatch):
    from dcn import hydra_callbacks

    real_access = os.access
    monkeypatch.setattr(
        hydra_callbacks.os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode)
    )
    with pytest.raises(hydra_callbacks.RunDirectoryError) as info:
        hydra_callbacks.check_run_directory(tmp_path / "logs" / "run", "hydra.run.dir")
    message = str(info.value)
    assert "\n" not in message
    assert (
        f"cannot create the run directory {tmp_path / 'logs' / 'run'}: {tmp_path} is not writable" in message
    )
    assert "paths.log_dir=" in message


def test_resume_inside_the_directory_is_allowed(tmp_path):
    from dcn.hydra_callbacks import RunDirectoryError, check_run_directory

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    check_run_directory(tmp_path, "hydra.run.dir", str(tmp_path / "checkpoints" / "last.ckpt"))
    with pytest.raises(RunDirectoryError):
        check_run_directory(tmp_path, "hydra.run.dir", str(tmp_path.parent / "elsewhere.ckpt"))
    check_run_directory(tmp_path / "new", "hydra.run.dir")  # a new directory is fine


def test_disk_full_while_checkpointing_leaves_no_truncated_file(compose_train, tmp_path, monkeypatch):
    """ENOSPC in the middle of a checkpoint write: the run ends 'failed' with the error in results.json,
    no file under a checkpoint's name is truncated, and no temporary file is left behind."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    import train

    def full_disk(self, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"\0" * 1000)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", full_disk)
    cfg = compose_train(TINY)
    with pytest.raises(OSError, match="No space left on device"):
        train.main.__wrapped__(cfg)
    run_dir = Path(cfg.paths.output_dir)
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]["message"]
    leftovers = [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".ckpt"]
    assert leftovers == []


def test_disk_full_while_writing_results_leaves_no_temporary_file(compose_train, tmp_path, monkeypatch):
    from dcn.results import RunRecord

    cfg = compose_train([])
    record = RunRecord(tmp_path / "run", cfg)
    record.write()
    before = (tmp_path / "run" / "results.json").read_text()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        record.finish("failed")
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["results.json"]
    assert (tmp_path / "run" / "results.json").read_text() == before  # the last complete record stays
