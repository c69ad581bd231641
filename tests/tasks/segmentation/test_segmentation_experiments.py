"""Both segmentation experiments compose and run end to end (fast_dev_run) through train.py."""

from __future__ import annotations

import pytest

from dcn.datamodules.synthetic.shapes import SyntheticShapesGenerator
from dcn.results import RunRecord

TINY_RUN = [
    "trainer.fast_dev_run=true",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    "task.aspp_channels=16",
    "task.decoder_channels=16",
]


def _run(cfg) -> dict:
    from train import train  # train.py lives at the repository root (tests/conftest.py puts it on sys.path)

    record = RunRecord(cfg.paths.output_dir, cfg)
    train(cfg, record)
    return record.data


@pytest.mark.parametrize("deform", ["true", "false"])
def test_deeplab_synthetic_fast_dev_run(compose_train, deform):
    cfg = compose_train(
        [
            "experiment=deeplab_synthetic",
            f"backbone.deform.enabled={deform}",
            *TINY_RUN,
            "data.generator.num_train=4",
            "data.generator.num_val=2",
            "data.generator.num_test=2",
            "data.generator.image_size=48",
        ]
    )
    assert cfg.task._target_ == "dcn.tasks.segmentation.SegmentationTask"
    assert cfg.backbone.arch == "resnet18" and cfg.backbone.output_stride == 16
    assert cfg.callbacks.model_checkpoint.monitor == "val/mIoU"
    data = _run(cfg)
    assert {"test/loss", "test/mIoU", "test/pixel_acc", "test/mean_class_acc"} <= set(data["metrics"])
    assert 0 <= data["metrics"]["test/mIoU"] <= 1
    assert (data["parameters"]["offset_predictor"] > 0) == (deform == "true")


def test_deeplab_voc_fast_dev_run(compose_train, tmp_path):
    # A VOC 2012 tree in the real layout (written by the synthetic generator: classes 0..5 of VOC's 21).
    SyntheticShapesGenerator(num_train=2, num_val=2, num_test=1, image_size=40).write(tmp_path / "voc")
    cfg = compose_train(
        ["experiment=deeplab_voc", f"data.root={tmp_path / 'voc'}", "backbone.pretrained=null", *TINY_RUN]
    )
    assert cfg.backbone.arch == "resnet50" and cfg.backbone.deform.enabled and cfg.trainer.max_epochs == 30
    assert cfg.data._target_ == "dcn.datamodules.VOCSegDataModule" and cfg.task.head_lr_mult == 10.0
    data = _run(cfg)
    assert data["metrics"]["test/mIoU"] >= 0
    assert data["parameters"]["offset_predictor"] > 0
