"""python -m dcn.eval: a finished run re-tested from its own config and checkpoint (same numbers as
its results.json), on another split or dataset, never overwriting a file; clear errors otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcn import eval as dcn_eval

SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "callbacks.progress_bar=null",
    "data.canvas_size=12",
    "data.digit_size=10",
    "task.num_val_images=0",
]


@pytest.fixture
def finished_run(compose_train, tmp_path) -> Path:
    """A short seed_net run on digits through train.py: its run directory."""
    import train
    from dcn.results import RunRecord

    cfg = compose_train(SHORT)
    record = RunRecord(cfg.paths.output_dir, cfg)
    train.train(cfg, record)
    record.finish("completed")
    return Path(cfg.paths.output_dir)


def test_round_trip_equals_results_json_and_never_overwrites(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    first = dcn_eval.main([str(finished_run)])
    assert first["metrics"] == pytest.approx(results["metrics"], rel=1e-6, abs=1e-7)
    assert Path(first["path"]) == finished_run / "eval.json"
    assert first["checkpoint"] == str(Path(results["best"]["checkpoint"]).resolve())
    second = dcn_eval.main([str(finished_run)])
    assert Path(second["path"]) == finished_run / "eval.1.json"
    assert json.loads((finished_run / "eval.json").read_text())["metrics"] == first["metrics"]
    assert json.loads((finished_run / "results.json").read_text()) == results  # untouched


def test_validation_split_and_data_overrides(finished_run):
    val = dcn_eval.main([str(finished_run), "--split", "val", "data.batch_size=7"])
    assert set(val["metrics"]) >= {"val/acc", "val/loss"} and val["split"] == "val"
    assert val["data_config"]["batch_size"] == 7


def test_another_dataset_of_the_same_format(finished_run, mnist_root):
    """data=<name> swaps the data config for another one of conf/data (here: digits -> MNIST, both
    1-channel 10-class; seed_net pools globally, so the larger images are fine), with its own keys on top."""
    other = dcn_eval.main(
        [
            str(finished_run),
            "data=mnist",
            f"data.root={mnist_root}",
            "data.canvas_size=28",
            "data.num_workers=0",
            "data.val_size=10",
        ]
    )
    assert other["data_config"]["root"] == str(mnist_root)
    assert 0.0 <= other["metrics"]["test/acc"] <= 1.0


def test_bad_arguments_are_named(finished_run, tmp_path):
    with pytest.raises(dcn_eval.EvalError, match=r"data overrides only .*\['trainer.max_epochs=3'\]"):
        dcn_eval.main([str(finished_run), "trainer.max_epochs=3"])
    with pytest.raises(FileNotFoundError, match="no such run directory or checkpoint"):
        dcn_eval.main([str(tmp_path / "nowhere")])
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        dcn_eval.main([str(tmp_path / "empty_run")])


def test_command_line_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dcn.eval", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"python -m dcn.eval: error: no such run directory or checkpoint: {tmp_path / 'nowhere'}"
    ]
