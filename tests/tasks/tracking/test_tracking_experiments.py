"""Both tracking experiments compose and run end to end through train.py, on tiny data."""

from __future__ import annotations

import math

import pytest
from omegaconf import open_dict

import train
from dcn.datamodules.synthetic.tracks import SyntheticTracksGenerator
from dcn.results import RunRecord

ONE_BATCH = ["trainer=cpu", "trainer.fast_dev_run=1", "callbacks.progress_bar=null", "logger=[]"]
# One real (tiny) epoch instead of fast_dev_run: the best checkpoint is written and train.py tests it, so
# checkpoints must load with torch.load(weights_only=True) (plain hyper-parameters).
ONE_STEP_EPOCH = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "callbacks.progress_bar=null",
    "logger=[]",
]
TINY_GENERATOR = dict(
    num_train=4, num_val=1, num_test=1, num_frames=14, image_size=[96, 72], distractors=[1, 1]
)
TEST_METRICS = {"test/accuracy", "test/failures", "test/success_auc", "test/precision20"}


def _run(cfg, tmp_path):
    record = RunRecord(tmp_path / "run", cfg)
    train.train(cfg, record)
    return record.data


@pytest.mark.parametrize("deform", [pytest.param(False, marks=pytest.mark.slow), True])
def test_siamrpn_synthetic_trains_checkpoints_and_tests_the_best_checkpoint(compose_train, tmp_path, deform):
    cfg = compose_train(
        ONE_STEP_EPOCH + ["experiment=siamrpn_synthetic", f"backbone.deform.enabled={deform}"]
    )
    with open_dict(cfg):
        cfg.data.cache_dir = str(tmp_path / "cache")
        cfg.data.generator.update(TINY_GENERATOR)
        cfg.data.update(batch_size=2, train_pairs=2, val_pairs=2)
    record = _run(cfg, tmp_path)
    metrics = record["metrics"]
    assert TEST_METRICS <= set(metrics)
    assert 0 <= metrics["test/success_auc"] <= 1 and 0 <= metrics["test/precision20"] <= 1
    assert metrics["test/failures"] >= 0 and math.isfinite(metrics["test/failures"])
    assert (record["parameters"]["offset_predictor"] > 0) == deform
    assert record["best"]["checkpoint"].endswith(".ckpt")


@pytest.mark.slow
def test_siamrpn_vot_fast_dev_run_on_a_vot_layout_root(compose_train, tmp_path):
    # A VOT-layout root with 4 sequences (the generator's train split), at the experiment's 127/255 crops.
    SyntheticTracksGenerator(**{**TINY_GENERATOR, "image_size": [128, 96]}).write(tmp_path / "data")
    cfg = compose_train(ONE_BATCH + ["experiment=siamrpn_vot", "backbone.pretrained=null"])
    with open_dict(cfg):
        cfg.data.update(root=str(tmp_path / "data" / "train"), batch_size=2, num_workers=0, max_test_frames=4)
    record = _run(cfg, tmp_path)
    assert TEST_METRICS <= set(record["metrics"])
    assert record["experiment_name"] == "siamrpn_vot"
