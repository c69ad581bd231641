"""train.py end to end: every config composes and trains a batch; runs are reproducible; the run
directory, results.json and failure handling behave as documented."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf, open_dict

import train
from dcn.results import RESULTS_FILE, RunRecord

ROOT = Path(__file__).resolve().parents[1]  # not imported from conftest: several conftest modules exist
CONF_DIR = ROOT / "src" / "dcn" / "conf"

BACKBONES = sorted(p.stem for p in (CONF_DIR / "backbone").glob("*.yaml"))
DATASETS = ["digits", "mnist", "image_folder"]  # the classification data (other tasks test theirs)
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
CLASSIFICATION = "dcn.tasks.classification.ClassificationTask"
HEAVY_BACKBONES = {"resnet50", "resnet101", "vgg16"}

ONE_BATCH = ["trainer=cpu", "trainer.fast_dev_run=1", "callbacks.progress_bar=null"]


def _point_data_at_fakes(cfg, mnist_root, image_folder_root):
    """Small inputs (32x32 suits every backbone, VGG included) from the fabricated datasets."""
    with open_dict(cfg):
        cfg.data.batch_size = 2
        target = cfg.data._target_
        if target.endswith("DigitsDataModule"):
            cfg.data.canvas_size = 32
        elif target.endswith("MNISTDataModule"):
            cfg.data.update(root=str(mnist_root), download=False, val_size=20, canvas_size=32, num_workers=0)
        elif target.endswith("ImageFolderDataModule"):
            cfg.data.update(root=str(image_folder_root), image_size=32, num_workers=0)
        else:  # a new data config: teach this test how to make it small and offline
            raise AssertionError(f"no fake dataset for {target}")


def _run(cfg, run_dir):
    record = RunRecord(run_dir, cfg)
    train.train(cfg, record)
    return record


# Every backbone with every dataset, except that the heavy backbones (which only differ from the
# light ones of their family in depth) meet one dataset, to keep the suite within its CPU budget.
COMBINATIONS = [
    pytest.param(data, backbone, marks=[pytest.mark.slow] if backbone in HEAVY_BACKBONES else [])
    for backbone in BACKBONES
    for data in (DATASETS[:1] if backbone in HEAVY_BACKBONES else DATASETS)
]


@pytest.mark.parametrize("data, backbone", COMBINATIONS)
def test_every_data_backbone_combination_trains_and_tests_a_batch(
    compose_train, tmp_path, mnist_root, image_folder_root, data, backbone
):
    cfg = compose_train(ONE_BATCH + [f"data={data}", f"backbone={backbone}"])
    _point_data_at_fakes(cfg, mnist_root, image_folder_root)
    record = _run(cfg, tmp_path / "run")
    assert {"test/loss", "test/acc"} <= set(record.data["metrics"])
    params = record.data["parameters"]
    assert params["offset_predictor"] > 0  # deform is on in every backbone's default config
    assert params["total"] == params["trainable"] > params["offset_predictor"]
    assert (record.data["data"], record.data["backbone"]) == (data, backbone)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_trains_and_tests_a_batch(
    compose_train, tmp_path, mnist_root, image_folder_root, experiment
):
    cfg = compose_train(ONE_BATCH + [f"experiment={experiment}"])  # every experiment composes
    if cfg.task._target_ != CLASSIFICATION:
        pytest.skip(f"{experiment} is a {cfg.task._target_} experiment: its task's tests run it")
    if cfg.data._target_.endswith(
        "ScaledMNISTDataModule"
    ):  # needs a bigger test file than the fake's 20 digits
        pytest.skip(f"{experiment}: tests/tasks/classification/test_mnist_scaled_experiment.py runs it")
    _point_data_at_fakes(cfg, mnist_root, image_folder_root)
    record = _run(cfg, tmp_path / "run")
    assert record.data["experiment_name"] == experiment
    assert "test/acc" in record.data["metrics"]


def test_mnist_seednet_is_the_seeds_network_on_mnist(compose_train):
    cfg = compose_train(["experiment=mnist_seednet"])
    assert cfg.data._target_.endswith("MNISTDataModule")
    assert cfg.backbone._target_.endswith("SeedNet") and cfg.backbone.deform.enabled


SHORT_FIT = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "data.canvas_size=12",
    "data.digit_size=10",
    "data.batch_size=16",
    "callbacks=none",
    "logger=[]",
    "test=false",
]


def test_same_seed_gives_the_same_validation_metrics(compose_train, tmp_path):
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        cfg = compose_train(SHORT_FIT + [f"seed={seed}"])
        cfg.paths.output_dir = str(tmp_path / f"run{i}")
        runs.append(_run(cfg, tmp_path / f"run{i}").data["val_metrics"])
    assert runs[0] and runs[0] == runs[1]
    assert runs[0]["val/loss"] != runs[2]["val/loss"]  # the seed does reach the training


def test_in_channels_and_num_classes_come_from_the_datamodule(compose_train, tmp_path, image_folder_root):
    # seed_net.yaml says in_channels: 1 and no config names a class count; the RGB image folder has 3 classes.
    cfg = compose_train(ONE_BATCH + ["data=image_folder", "data.image_size=16"])
    with open_dict(cfg):
        cfg.data.update(root=str(image_folder_root), num_workers=0, batch_size=2)
    record = _run(cfg, tmp_path / "run")
    assert record.data["status"] == "running"  # main() sets the final status, train() does not
    first_conv = {c: c * 32 * 9 + 32 for c in (1, 3)}  # 3x3 conv c -> 32 with bias
    head = {k: 128 * k + k for k in (3, 10)}  # Linear(128, k)
    expected = 262_876 - first_conv[1] + first_conv[3] - head[10] + head[3]
    assert record.data["parameters"]["total"] == expected


def test_unknown_choice_lists_the_available_options():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(MissingConfigException) as info:
            compose("train", overrides=["backbone=resnet999"])
    message = str(info.value)
    assert "resnet999" in message and "Available options" in message
    for name in BACKBONES:
        assert name in message
    GlobalHydra.instance().clear()


def test_callbacks_and_loggers_compose_as_lists(compose_train):
    cfg = compose_train(["callbacks=[default,early_stopping]", "logger=[csv,tensorboard]"])
    assert set(cfg.callbacks) == {
        "model_checkpoint",
        "last_checkpoint",
        "graceful_shutdown",
        "rng_state",
        "validation_pictures",
        "early_stopping",
        "epoch_log",
        "progress_bar",
        "model_summary",
    }
    assert set(cfg.logger) == {"csv", "tensorboard"}
    assert cfg.callbacks.model_checkpoint.monitor == cfg.task.monitor == "val/acc"
    assert "early_stopping" not in compose_train([]).callbacks  # off by default


def test_run_directories_differ_even_within_one_second(tmp_path):
    dirs = []
    for _ in range(2):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.root_dir={tmp_path}"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        dirs.append(OmegaConf.select(cfg, "hydra.run.dir"))
        dirs.append(OmegaConf.select(cfg, "hydra.sweep.dir"))
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    assert all(d.startswith(str(tmp_path / "logs" / "default")) for d in dirs)
    assert len(set(dirs)) == 4


# ---- python train.py in subprocesses ------------------------------------------------------------

TINY_RUN = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.canvas_size=12",
    "data.digit_size=10",
    "data.batch_size=16",
    "callbacks.progress_bar=null",
]


def _start(log_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DCN_ROOT"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", *TINY_RUN, *overrides],
        cwd=log_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def _snapshot(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two `python train.py` runs started together, into one log directory. Shared by the tests of
    this module, so no test may write into it (a test that adds runs works on a copy)."""
    log_dir = tmp_path_factory.mktemp("train_cli") / "logs"
    log_dir.mkdir()
    processes = [_start(log_dir, "seed=0"), _start(log_dir, "seed=1")]
    outcomes = [_finish(p) for p in processes]
    for code, output in outcomes:
        assert code == 0, output[-3000:]
    return log_dir, outcomes


@pytest.mark.slow
def test_cli_runs_write_complete_results_into_their_own_directories(two_runs):
    log_dir, outcomes = two_runs
    results = sorted((log_dir / "default" / "runs").glob(f"*/{RESULTS_FILE}"))
    assert len(results) == 2  # no collision, although started together
    for path, seed in zip(sorted(results, key=lambda p: json.loads(p.read_text())["seed"]), (0, 1)):
        r = json.loads(path.read_text())
        assert r["status"] == "completed" and r["error"] is None and r["seed"] == seed
        assert r["run_dir"] == str(path.parent)
        assert (r["task"], r["backbone"], r["data"]) == ("classification", "seed_net", "digits")
        assert r["deform"]["enabled"] is True
        assert {"test/acc", "test/loss", "test/acc_top5"} <= set(r["metrics"])
        assert 0 <= r["metrics"]["test/acc"] <= 1
        assert r["parameters"] == {
            "total": 262_876,
            "trainable": 262_876,
            "offset_predictor": 128 * 18 * 9 + 18,
            "roi_offset_head": 0,
        }
        assert Path(r["best"]["checkpoint"]).is_file() and Path(r["last_checkpoint"]).is_file()
        assert r["best"]["monitor"] == "val/acc"
        columns = Path(r["metrics_csv"]).read_text().splitlines()[0].split(",")
        assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc"} <= set(columns)
        assert r["timing"]["wall_s"] > 0 and r["timing"]["fit_s"] > 0 and r["timing"]["test_s"] > 0
        assert r["versions"]["torch"] and r["versions"]["lightning"] and r["versions"]["dcn"]
        assert r["config"]["data"]["canvas_size"] == 12
        assert "trainer.max_epochs=1" in r["overrides"]
        assert (path.parent / ".hydra" / "config.yaml").is_file()
    for _, output in outcomes:
        assert "test/acc" in output and "run dir" in output  # the printed summary


@pytest.mark.slow
def test_failed_run_records_the_error_and_keeps_earlier_runs(two_runs, tmp_path):
    log_dir = tmp_path / "logs"  # a copy: the shared runs stay as they were for the other tests
    shutil.copytree(two_runs[0], log_dir)
    before = _snapshot(log_dir)
    code, output = _finish(_start(log_dir, "data.val_fraction=0.9"))
    assert code != 0
    assert _snapshot(log_dir).items() >= before.items()  # every earlier file still there, unchanged
    failed = [
        json.loads(p.read_text())
        for p in (log_dir / "default" / "runs").glob(f"*/{RESULTS_FILE}")
        if json.loads(p.read_text())["status"] != "completed"
    ]
    assert len(failed) == 1 and failed[0]["status"] == "failed"
    assert "data.val_fraction" in failed[0]["error"]["message"]
    assert "data.val_fraction" in output
