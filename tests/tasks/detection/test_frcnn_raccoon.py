"""experiment=frcnn_raccoon: Faster R-CNN on the real raccoon photos through voc_det, as they are on disk."""

from __future__ import annotations

import pytest
from omegaconf import open_dict
from shared_data import shared_dataset

from dcn.results import RunRecord

ONE_STEP = [
    "trainer.fast_dev_run=1",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "logger=[]",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "task.min_size=128",
    "task.max_size=160",
]


def test_experiment_reads_the_raccoon_layout_with_one_class_and_tests_the_last_checkpoint(compose_train):
    cfg = compose_train(["experiment=frcnn_raccoon"])
    assert cfg.data._target_ == "dcn.datamodules.VOCDetDataModule"
    assert list(cfg.data.class_names) == ["raccoon"] and list(cfg.data.test_sets) == ["raccoon/val"]
    assert cfg.data.root.endswith("raccoon")
    # The 40 test images are the only held-out ones: no validation, the newest checkpoint is tested.
    assert cfg.callbacks.model_checkpoint.monitor is None and cfg.trainer.limit_val_batches == 0


@pytest.mark.real_data
def test_one_detection_training_step_and_test_batch_on_raccoon(compose_train):
    from train import train

    cfg = compose_train(["experiment=frcnn_raccoon", *ONE_STEP])
    with open_dict(cfg):
        cfg.data.root = str(shared_dataset("raccoon"))
    record = RunRecord(cfg.paths.output_dir, cfg)
    train(cfg, record)
    metrics = record.data["metrics"]
    assert {"test/mAP", "test/mAP70", "test/AP50/raccoon"} <= set(metrics)
    assert 0 <= metrics["test/mAP"] <= 1
    assert record.data["global_step"] == 1 and record.data["parameters"]["offset_predictor"] > 0
