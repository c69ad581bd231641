"""experiment=mnist_scaled through train.py: one accuracy per test scale, the pooled test/acc, the published
optimiser and schedule; on fabricated digits and on the real MNIST test file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from shared_data import shared_dataset

import train
from dcn.results import RunRecord

SHORT = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "callbacks.progress_bar=null",
    "callbacks.validation_pictures=null",
    "logger=[]",
]
SCALE_KEYS = {
    f"test/acc_scale{s}"
    for s in ("0.5", "0.6", "0.7", "0.8", "0.9", "1.0", "1.1", "1.2", "1.3", "1.4", "1.5")
}


def _write_t10k(root: Path, per_class: int = 10) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 6 + label : 16 + label, 9:19] = 255  # a bar whose height encodes the class
    for name, array in (("t10k-images-idx3-ubyte.gz", images), ("t10k-labels-idx1-ubyte.gz", labels)):
        header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        (raw / name).write_bytes(gzip.compress(header + array.tobytes()))
    return root


def _run(cfg, run_dir: Path) -> dict:
    record = RunRecord(run_dir, cfg)
    train.train(cfg, record)
    return record.data


def test_experiment_is_the_published_protocol(compose_train):
    cfg = compose_train(["experiment=mnist_scaled"])
    assert cfg.data._target_ == "dcn.datamodules.ScaledMNISTDataModule" and list(cfg.data.scales)[5] == 1.0
    assert cfg.backbone._target_ == "dcn.backbones.FiveConvNet" and list(cfg.backbone.deform.stages) == [4, 5]
    assert cfg.task.optimizer._target_ == "torch.optim.Adam" and cfg.task.optimizer.lr == 0.001
    assert cfg.task.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert (cfg.task.scheduler.step_size, cfg.task.scheduler.gamma) == (
        1,
        0.7,
    ) and "T_max" not in cfg.task.scheduler
    assert (cfg.data.batch_size, cfg.trainer.max_epochs) == (64, 14)


@pytest.mark.parametrize("backbone", ["five_conv_net", "seed_net"])
def test_one_accuracy_per_scale_and_test_acc_is_their_mean(compose_train, tmp_path, backbone):
    cfg = compose_train(SHORT + ["experiment=mnist_scaled", f"backbone={backbone}"])
    with open_dict(cfg):
        cfg.data.update(root=str(_write_t10k(tmp_path / "data")), test_size=20, val_size=10, batch_size=16)
    record = _run(cfg, tmp_path / "run")
    metrics = record["metrics"]
    assert SCALE_KEYS | {"test/acc", "test/loss", "test/acc_top5"} <= set(metrics)
    assert not any("dataloader_idx" in key for key in metrics)
    # Equal-sized test sets: the pooled accuracy is the mean over scales.
    assert metrics["test/acc"] == pytest.approx(np.mean([metrics[k] for k in SCALE_KEYS]), abs=1e-6)
    assert record["parameters"]["offset_predictor"] > 0


@pytest.mark.real_data
def test_mnist_scaled_trains_a_step_and_tests_every_scale_on_real_digits(compose_train, tmp_path):
    cfg = compose_train(
        SHORT + ["experiment=mnist_scaled", "trainer.limit_test_batches=2", "backbone.deform.modulated=true"]
    )
    with open_dict(cfg):
        cfg.data.root = str(shared_dataset("mnist"))
    record = _run(cfg, tmp_path / "run")
    metrics = record["metrics"]
    assert SCALE_KEYS <= set(metrics) and all(0 <= metrics[k] <= 1 for k in SCALE_KEYS)
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
    assert record["global_step"] == 2
