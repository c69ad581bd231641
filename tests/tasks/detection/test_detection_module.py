"""DetectionTask: losses and metrics logged, warm-up, pictures, bad batches, and a short training that
learns."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from dcn.backbones import ResNetBackbone
from dcn.callbacks import ValidationPictures
from dcn.datamodules.detection.synthetic import SyntheticDetDataModule, SyntheticDetGenerator
from dcn.tasks.detection import DetectionTask
from dcn.tasks.detection.module import LOSS_NAMES

SMALL_TASK = dict(
    min_size=64,
    max_size=64,
    anchor_sizes=[[8], [16], [32], [64], [128]],
    representation_size=64,
    deform_roi_pool={"hidden_channels": 64},
    rpn={
        "pre_nms_top_n_train": 200,
        "post_nms_top_n_train": 100,
        "pre_nms_top_n_test": 100,
        "post_nms_top_n_test": 50,
    },
    roi_heads={"batch_size_per_image": 64},
)


def _task(num_classes=6, roi_pool="deform", deform=True, **kwargs) -> DetectionTask:
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", deform={"enabled": deform})
    args = {**SMALL_TASK, **kwargs}
    return DetectionTask(
        backbone, num_classes, partial(torch.optim.SGD, lr=0.01, momentum=0.9), roi_pool=roi_pool, **args
    )


@pytest.fixture(scope="module")
def det_cache(tmp_path_factory) -> Path:
    """One generated dataset for the whole module (generation is the slow part of a tiny run)."""
    return tmp_path_factory.mktemp("synthetic_det")


def _datamodule(cache: Path, **generator) -> SyntheticDetDataModule:
    params = dict(
        num_train=16, num_val=4, num_test=4, image_size=64, size_range=(0.15, 0.3), objects=(1, 2), seed=1
    )
    return SyntheticDetDataModule(
        cache, SyntheticDetGenerator(**{**params, **generator}), batch_size=4, val_batch_size=4
    )


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**args, **kwargs})


class _LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses = []
        self.logged = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.logged |= set(trainer.callback_metrics)


def test_a_short_synthetic_training_lowers_the_loss_and_logs_every_term(tmp_path, det_cache):
    recorder = _LossRecorder()
    torch.manual_seed(0)
    task = _task()
    trainer = _trainer(tmp_path, max_epochs=5, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(task, datamodule=_datamodule(det_cache))
    assert len(recorder.losses) == 20  # 16 images / 4 per batch x 5 epochs
    assert {f"train/{n}_step" for n in LOSS_NAMES} | {"train/loss_step"} <= recorder.logged
    first, last = sum(recorder.losses[:4]) / 4, sum(recorder.losses[-4:]) / 4
    assert last < 0.8 * first, recorder.losses


def test_validation_and_test_report_map_and_draw_pictures(tmp_path, det_cache):
    task = _task(num_val_images=2)
    dm = _datamodule(det_cache)
    pictures = ValidationPictures(tmp_path / "val_images")
    trainer = _trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0, callbacks=[pictures]
    )
    trainer.fit(task, datamodule=dm)
    metrics = trainer.callback_metrics
    assert {"val/mAP", "val/mAP70"} <= set(
        metrics
    ) and "val/mAP50" not in metrics  # mAP is mAP50: logged once
    assert 0 <= float(metrics["val/mAP"]) <= 1
    assert pictures.written == [tmp_path / "val_images" / "epoch_000.png"] and pictures.written[0].is_file()
    (scores,) = trainer.test(task, datamodule=dm, verbose=False)
    assert {"test/mAP", "test/mAP70"} <= set(scores) and "test/mAP50" not in scores
    assert task.test_scores is not None
    present = {name for name in task.class_names()[1:] if f"test/AP50/{name}" in scores}
    assert present  # the classes with ground truth in the test split have their AP logged
    assert task.class_names() == dm.class_names


def test_coco_metrics_can_be_added(tmp_path, det_cache):
    task = _task(metrics=["voc", "coco"], num_val_images=0)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=_datamodule(det_cache))
    # VOC first: mAP is VOC mAP50 (logged once, as mAP); COCO's numbers beside it.
    assert {"val/mAP", "val/coco/mAP", "val/coco/mAP50", "val/coco/mAR100", "val/mAP70"} <= set(
        trainer.callback_metrics
    )
    assert "val/mAP50" not in trainer.callback_metrics


def test_warmup_ramps_linearly_to_the_scheduled_rate():
    task = _task(warmup_iters=10, warmup_factor=0.1)
    assert task.warmup_multiplier(0) == pytest.approx(0.1)
    assert task.warmup_multiplier(5) == pytest.approx(0.1 * 0.5 + 0.5)
    assert task.warmup_multiplier(10) == 1.0 and task.warmup_multiplier(1000) == 1.0
    assert _task().warmup_multiplier(0) == 1.0


def test_warmup_scales_the_step_and_restores_the_scheduled_rate(tmp_path, det_cache):
    task = _task(warmup_iters=4, warmup_factor=0.25)
    seen = []

    class Spy(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(optimizer.param_groups[0]["lr"])

    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[Spy()])
    trainer.fit(task, datamodule=_datamodule(det_cache))
    # on_before_optimizer_step runs inside optimizer.step's closure, i.e. with the warm-up rate applied.
    assert seen == pytest.approx([0.01 * 0.25, 0.01 * (0.25 * 0.75 + 0.25)])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)


def test_bad_batches_and_settings_raise_clear_errors():
    task = _task(num_classes=3)
    image = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match=r"list of Tensor\[3, H, W\]"):
        task.training_step((torch.rand(2, 3, 32, 32), [{}, {}]), 0)
    with pytest.raises(ValueError, match="1 images but 2 targets"):
        task.training_step(([image], [{}, {}]), 0)
    with pytest.raises(ValueError, match=r"boxes Tensor\[K, 4\]"):
        task.training_step(
            ([image], [{"boxes": torch.zeros(4), "labels": torch.zeros(1, dtype=torch.int64)}]), 0
        )
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.2"):
        task.training_step(
            ([image], [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([3])}]), 0
        )
    with pytest.raises(ValueError, match="task.warmup"):
        _task(warmup_iters=-1)
    with pytest.raises(ValueError, match="task.metrics"):
        _task(metrics=["map"])
    with pytest.raises(ValueError, match="task.class_names"):
        _task(num_classes=3, class_names=["background", "a"])


def test_hparams_hold_plain_values_so_checkpoints_load_weights_only(tmp_path, det_cache):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"rpn": {"nms_thresh": 0.7}, "anchors": [[8], [16], [32], [64], [128]], "metrics": ["voc"]}
    )
    task = _task(rpn=cfg.rpn, anchor_sizes=cfg.anchors, metrics=cfg.metrics)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(task, datamodule=_datamodule(det_cache))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["anchor_sizes"] == [[8], [16], [32], [64], [128]]
