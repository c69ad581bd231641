"""experiment=siamrpn_raccoon_bag: SiamRPN trained on raccoon boxes, tested on the real VOT bag sequence."""

from __future__ import annotations

import math

import pytest
from omegaconf import open_dict
from shared_data import shared_dataset

import train
from dcn.results import RunRecord

ONE_STEP_EPOCH = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "callbacks.progress_bar=null",
    "logger=[]",
]
TEST_METRICS = {"test/accuracy", "test/failures", "test/success_auc", "test/precision20"}


def test_experiment_trains_on_detection_pairs_and_tests_on_vot_bag(compose_train):
    cfg = compose_train(["experiment=siamrpn_raccoon_bag"])
    assert cfg.data._target_ == "dcn.datamodules.DetectionPairsDataModule"
    assert cfg.data.detection._target_ == "dcn.datamodules.VOCDetDataModule"
    assert list(cfg.data.detection.class_names) == ["raccoon"] and cfg.data.test_root.endswith("vot-bag")
    assert (cfg.task.template_size, cfg.task.search_size) == (63, 127)


@pytest.mark.real_data
def test_a_training_step_on_raccoon_and_20_frames_of_tracking_on_bag(compose_train, tmp_path):
    cfg = compose_train(ONE_STEP_EPOCH + ["experiment=siamrpn_raccoon_bag"])
    with open_dict(cfg):
        cfg.data.detection.root = str(shared_dataset("raccoon"))
        cfg.data.test_root = str(shared_dataset("vot-bag"))
        cfg.data.update(train_pairs=4, val_pairs=2, batch_size=2, max_test_frames=20)
    record = RunRecord(tmp_path / "run", cfg)
    train.train(cfg, record)
    metrics = record.data["metrics"]
    assert TEST_METRICS <= set(metrics)
    assert 0 <= metrics["test/success_auc"] <= 1 and 0 <= metrics["test/precision20"] <= 1
    assert metrics["test/failures"] >= 0 and math.isfinite(metrics["test/failures"])
    assert record.data["best"]["checkpoint"].endswith(".ckpt")
