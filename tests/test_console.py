"""What a run shows and records: train.log holds the console's messages (config, Lightning messages,
one line per epoch, the summary, warnings, a failed run's traceback); known library noise is gone; the
test metrics are printed once; a redirected run prints progress lines, not bar frames; optional
dependencies are named with their extra; the installed commands run from any directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TWO_EPOCHS = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.canvas_size=12",
    "data.digit_size=10",
    "callbacks.progress_bar.refresh_steps=2",
]


def _train(args, cwd, script=None):
    cmd = [script] if script else [sys.executable, str(ROOT / "train.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """A real 2-epoch run with its output redirected (not a terminal): (process, run dir)."""
    tmp = tmp_path_factory.mktemp("console")
    run_dir = tmp / "run"
    proc = _train([f"hydra.run.dir={run_dir}", *TWO_EPOCHS], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, run_dir


@pytest.mark.slow
def test_train_log_records_the_run(two_epoch_run):
    proc, run_dir = two_epoch_run
    text = (run_dir / "train.log").read_text()
    assert re.search(
        r"dcn run default: task classification, backbone seed_net, deform on \(stages \[4\], v1, "
        r"offset_groups 1\), data digits, seed 0",
        text,
    )
    assert "GPU available: False" in text  # Lightning's own messages
    epochs = re.findall(r"\] epoch (\d)/2 \(step \d+\): (.*)", text)
    assert [e for e, _ in epochs] == ["1", "2"]
    for _, metrics in epochs:  # every logged train/val metric, once per epoch
        assert {"train/acc", "train/loss", "val/acc", "val/acc_top5", "val/loss"} <= set(
            re.findall(r"(\S+)=", metrics)
        )
    assert re.search(r"epoch 1/2 step 2/4 \([\d.]+ it/s\)", text)  # progress as lines, every 2 steps
    assert "dcn run completed" in text and "test/acc" in text
    summary = text[text.index("dcn run completed") :]
    record = json.loads((run_dir / "results.json").read_text())
    for key, value in record["metrics"].items():
        assert f"{key}" in summary and f"{value:.4f}" in summary


@pytest.mark.slow
def test_console_is_quiet_and_prints_the_test_metrics_once(two_epoch_run):
    proc, _ = two_epoch_run
    out = proc.stdout + proc.stderr
    assert "LeafSpec" not in out and "Tip:" not in out and "litlogger" not in out
    assert "Trainer already configured with model summary" not in out
    assert "\x1b[" not in out and "━" not in out  # no ANSI codes, no bar frames when redirected
    assert out.count("test/acc ") == 1 and "Test metric" not in out  # Lightning's table is not printed
    assert "MulticlassAccuracy" not in out and "FLOPs" not in out  # summary without metrics / empty FLOPs
    assert "SeedNet" in out


@pytest.mark.slow
def test_failed_run_keeps_its_traceback_in_the_log(tmp_path):
    run_dir = tmp_path / "run"
    proc = _train([f"hydra.run.dir={run_dir}", "data.digit_size=99"], tmp_path)
    assert proc.returncode == 1
    text = (run_dir / "train.log").read_text()
    assert "dcn run failed" in text and "Traceback (most recent call last)" in text
    assert "data.digit_size must be in [8, data.canvas_size" in text


def test_missing_extra_names_the_pip_command(monkeypatch):
    from dcn import extras

    real = extras._available
    monkeypatch.setattr(extras, "_available", lambda m: False if m == "wandb" else real(m))
    with pytest.raises(
        extras.MissingExtraError, match=r"logger=wandb needs .*wandb.*pip install 'dcn\[wandb\]'"
    ):
        extras.check_config({"logger": {"wandb": {"_target_": "dcn.loggers.WandbLogger"}}})
    monkeypatch.setattr(extras, "_available", lambda m: False)
    with pytest.raises(extras.MissingExtraError, match=r"pip install 'dcn\[coco\]'"):
        extras.check_config({"task": {"metrics": ["voc", "coco"]}})
    with pytest.raises(
        extras.MissingExtraError, match=r"hydra/launcher=slurm needs .*pip install 'dcn\[sweeps\]'"
    ):
        extras.check_command_line(["-m", "hydra/launcher=slurm"])
    extras.check_config(
        {"logger": {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger"}}}
    )  # core: fine


@pytest.mark.slow
def test_installed_commands_run_from_another_directory(tmp_path):
    """dcn-train and dcn-eval (console scripts) find their configs inside the package."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "dcn-train").exists():
        pytest.skip("dcn is not installed with its console scripts (pip install -e .)")
    run_dir = tmp_path / "elsewhere_run"
    proc = _train(
        [f"hydra.run.dir={run_dir}", "debug=limit", "data.canvas_size=12", "data.digit_size=10"],
        tmp_path,
        script=str(bin_dir / "dcn-train"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed"
    assert record["config"]["paths"]["root_dir"] == str(tmp_path)  # data and logs: where the command runs
    proc = subprocess.run(
        [str(bin_dir / "dcn-eval"), str(run_dir)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and (run_dir / "eval.json").is_file(), proc.stderr[-3000:]


def test_debug_configs_compose_for_every_experiment(compose_train):
    experiments = sorted(p.stem for p in (ROOT / "src" / "dcn" / "conf" / "experiment").glob("*.yaml"))
    for experiment in experiments:
        for debug in ("fdr", "limit", "overfit", "profiler"):
            cfg = compose_train([f"experiment={experiment}", f"debug={debug}"])
            assert cfg.paths.log_dir.endswith("logs/debug"), (experiment, debug)
        assert compose_train([f"experiment={experiment}", "debug=fdr"]).trainer.fast_dev_run is True


def test_debug_fdr_runs_without_misleading_warnings(compose_train, recwarn):
    import train
    from dcn.results import RunRecord

    cfg = compose_train(["debug=fdr", "data.canvas_size=12", "data.digit_size=10"])
    record = RunRecord(cfg.paths.output_dir, cfg)
    train.train(cfg, record)
    assert not [w for w in recwarn if "no best checkpoint" in str(w.message)]
    assert set(record.data["metrics"]) >= {"test/acc", "test/loss"}


@pytest.mark.parametrize("command", ["eval", "export", "detect", "track", "viz", "offset_spread"])
def test_every_command_on_a_trained_run_takes_the_run_first(command, capsys):
    # One interface: the first argument is a run directory or one of its checkpoints.
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"dcn.{command}").main(["--help"])
    assert exit_info.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"usage: python -m dcn\.{command} (\[-h\] )?(\[.*\] )*run\b", usage)
    assert "run: its directory (the best checkpoint) or one of its checkpoints (*.ckpt)" in usage
