"""logger=wandb offline (with TensorBoard alongside): a real training run's local W&B records hold the
metrics (equal to the CSV logger's), best-value summaries, the resolved config, run naming, offset
pictures and validation pictures; runs never prompt; each job gets its own W&B run; a resumed run
continues its W&B run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from train_runs import TINY_DIGITS
from wandb_records import read_run

from dcn.loggers import WandbLogger, wandb_credentials_available, wandb_run_id_of


@pytest.fixture
def no_credentials(monkeypatch, tmp_path: Path) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def test_credentials_detection(no_credentials, monkeypatch, tmp_path: Path) -> None:
    assert not wandb_credentials_available()
    (tmp_path / "no-netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert wandb_credentials_available()
    (tmp_path / "no-netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_credentials_available()


def test_bad_options_are_rejected(no_credentials, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="logger.wandb.mode"):
        WandbLogger(save_dir=tmp_path, mode="cloud")
    with pytest.raises(ValueError, match="logger.wandb.summary"):
        WandbLogger(save_dir=tmp_path, summary=[{"metric": "val/acc", "mode": "best"}])


def _write_credentials(tmp_path: Path) -> None:
    (tmp_path / "no-netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")


# The resolved mode is what the logger hands to wandb.init (checked without starting a run: no network).
@pytest.mark.parametrize(
    "mode, wandb_mode, credentials, expected",
    [
        ("auto", None, False, "offline"),
        ("auto", None, True, "online"),
        ("auto", "offline", True, "offline"),  # WANDB_MODE beats the credentials...
        ("auto", "online", False, "online"),  # ... and their absence
        ("auto", "disabled", True, "disabled"),
        ("auto", "dryrun", True, "offline"),  # wandb's old name for offline
        ("auto", "", True, "online"),  # set but empty: as unset
        ("online", None, False, "online"),  # explicit modes as given, whatever the credentials
        ("offline", None, True, "offline"),
        ("disabled", None, True, "disabled"),
    ],
)
def test_resolved_mode(
    no_credentials, monkeypatch, tmp_path: Path, mode, wandb_mode, credentials, expected
) -> None:
    if credentials:
        _write_credentials(tmp_path)
    if wandb_mode is not None:
        monkeypatch.setenv("WANDB_MODE", wandb_mode)
    logger = WandbLogger(save_dir=tmp_path / "run", mode=mode)
    assert logger.mode == expected
    assert logger._wandb_init["mode"] == expected


@pytest.mark.parametrize(
    "mode, wandb_mode", [("online", "offline"), ("offline", "disabled"), ("disabled", "online")]
)
def test_explicit_mode_beats_wandb_mode_with_a_warning(
    no_credentials, monkeypatch, tmp_path: Path, mode, wandb_mode
):
    # As wandb.init(mode=...) itself does: its argument wins over the environment variable.
    monkeypatch.setenv("WANDB_MODE", wandb_mode)
    with pytest.warns(UserWarning, match=f"W&B runs {mode} .*not {wandb_mode} as WANDB_MODE"):
        logger = WandbLogger(save_dir=tmp_path / "run", mode=mode)
    assert logger.mode == mode and logger._wandb_init["mode"] == mode


def test_unknown_wandb_mode_in_the_environment_is_named(no_credentials, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(ValueError, match="WANDB_MODE='ofline' in the environment"):
        WandbLogger(save_dir=tmp_path / "run")


@pytest.mark.parametrize("mode, wandb_mode", [("disabled", None), ("auto", "disabled")])
def test_disabled_run_logs_nothing_anywhere(
    no_credentials, monkeypatch, tmp_path: Path, mode, wandb_mode
) -> None:
    import wandb

    _write_credentials(tmp_path)  # would be online if "disabled" were lost
    if wandb_mode is not None:
        monkeypatch.setenv("WANDB_MODE", wandb_mode)
    logger = WandbLogger(save_dir=tmp_path / "run", mode=mode)
    assert logger.mode == "disabled"  # before anything could try the network
    logger.log_metrics({"val/acc": 0.5}, step=0)
    assert logger.experiment.disabled
    wandb.finish()
    assert not list((tmp_path / "run").rglob("*run-*"))


@pytest.mark.slow
def test_offline_training_run_records(no_credentials, compose_train, tmp_path: Path) -> None:
    import wandb

    import train
    from dcn.results import RunRecord

    cfg = compose_train(
        [
            "logger=[csv,wandb,tensorboard]",
            "callbacks=[default,offset_viz]",
            "callbacks.offset_viz.num_images=2",
            "task.num_val_images=4",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "test=false",
            *TINY_DIGITS,
        ]
    )
    record = RunRecord(cfg.paths.output_dir, cfg)
    train.train(cfg, record)
    record.finish("completed")
    wandb.finish()

    run_dir = tmp_path / "run"
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = read_run(run_file)
    assert records["run"]["project"] == "dcn"
    assert records["run"]["group"] == "default" and records["run"]["job_type"] == "classification"
    assert records["run"]["display_name"] == "seed_net-deform_True-s0"
    assert records["run"]["tags"] == ["dev"]
    # The resolved config (logged by train.py), not the ${...} interpolations.
    assert records["config"]["backbone"]["deform"]["enabled"] is True
    assert records["config"]["task"]["scheduler"]["T_max"] == 2

    with open(run_dir / "csv" / "metrics.csv") as f:
        csv_val = [float(row["val/acc"]) for row in csv.DictReader(f) if row["val/acc"]]
    wandb_val = [h["val/acc"] for h in records["history"] if "val/acc" in h]
    assert wandb_val == pytest.approx(csv_val) and len(wandb_val) == 2
    assert records["summary"]["val/acc"] == {"max": pytest.approx(max(csv_val))}
    assert "min" in records["summary"]["val/loss"]

    images = [h for h in records["history"] if "val/offsets/_type" in h]
    assert len(images) == 2  # one picture per epoch (every_n_epochs=1)
    media = list(run_file.parent.glob("files/media/images/**/*.png"))
    assert len(media) == 4  # 2 epochs x (offsets, predictions)
    assert sorted(p.name for p in (run_dir / "offsets").iterdir()) == ["epoch_000.png", "epoch_001.png"]
    assert len([h for h in records["history"] if "val/examples/_type" in h]) == 2
    assert len(list((run_dir / "val_images").glob("epoch_*.png"))) == 2

    # The same pictures went to TensorBoard, the other active image-capable logger.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("val/offsets")) == 2
    assert len(events.Images("val/examples")) == 2


@pytest.mark.slow
def test_each_logger_is_its_own_run_and_resume_reuses_the_id(no_credentials, tmp_path: Path) -> None:
    import wandb

    first = WandbLogger(save_dir=tmp_path / "a", name="job0")
    first_id = first.experiment.id
    assert first.mode == "offline"
    second = WandbLogger(save_dir=tmp_path / "b", name="job1")  # the next job of a sweep
    assert second.experiment.id != first_id
    wandb.finish()

    (tmp_path / "a" / "checkpoints").mkdir()
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert wandb_run_id_of(ckpt) == first_id
    resumed = WandbLogger(save_dir=tmp_path / "c", resume_from=ckpt)
    assert resumed.experiment.id == first_id
    wandb.finish()
    assert wandb_run_id_of(tmp_path / "nowhere" / "checkpoints" / "x.ckpt") is None
