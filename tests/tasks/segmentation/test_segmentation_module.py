"""SegmentationTask: learning-rate groups, poly schedule, frozen BatchNorm, logged metrics, validation
pictures, and a short training on synthetic data that lowers the loss."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from dcn.backbones import ResNetBackbone
from dcn.callbacks import ValidationPictures
from dcn.datamodules.segmentation.synthetic import SyntheticSegDataModule
from dcn.datamodules.synthetic.shapes import SyntheticShapesGenerator
from dcn.tasks.segmentation import SegmentationTask
from dcn.tasks.segmentation.metrics import scores_from_confusion
from dcn.tasks.segmentation.module import format_class_table

SGD = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9)
POLY = functools.partial(torch.optim.lr_scheduler.PolynomialLR, power=0.9)


def make_task(deform: bool = False, **kwargs) -> SegmentationTask:
    backbone = ResNetBackbone("resnet18", output_stride=16, deform={"enabled": deform})
    options = dict(optimizer=SGD, aspp_channels=16, decoder_channels=16, low_level_channels=8)
    options.update(kwargs)
    return SegmentationTask(backbone, num_classes=6, **options)


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> SyntheticSegDataModule:
    generator = SyntheticShapesGenerator(
        num_train=8, num_val=4, num_test=4, image_size=64, objects=(2, 3), size_range=(0.2, 0.35)
    )
    dm = SyntheticSegDataModule(
        tmp_path_factory.mktemp("synthetic_seg"),
        generator,
        crop_size=64,
        scale_range=None,
        batch_size=4,
        val_batch_size=4,
    )
    dm.setup()
    return dm


def test_head_learning_rate_is_ten_times_the_backbones():
    task = make_task(head_lr_mult=10.0)
    optimizer = task.configure_optimizers()["optimizer"]
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"backbone": pytest.approx(0.01), "head": pytest.approx(0.1)}
    n_backbone = sum(p.numel() for p in optimizer.param_groups[0]["params"])
    n_head = sum(p.numel() for p in optimizer.param_groups[1]["params"])
    assert n_backbone == sum(p.numel() for p in task.backbone.parameters())
    assert n_backbone + n_head == sum(p.numel() for p in task.parameters())


class _FakeTrainer:
    estimated_stepping_batches = 50
    max_epochs = 5


def test_poly_schedule_gets_the_total_number_of_steps(monkeypatch):
    task = make_task(scheduler=POLY, head_lr_mult=10.0)
    monkeypatch.setattr(SegmentationTask, "trainer", property(lambda self: _FakeTrainer()))
    config = task.configure_optimizers()
    scheduler, optimizer = config["lr_scheduler"]["scheduler"], config["optimizer"]
    assert config["lr_scheduler"]["interval"] == "step" and scheduler.total_iters == 50
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    factor = (1 - 20 / 50) ** 0.9
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * factor)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * factor)
    # total_iters set in the config is left alone.
    task = make_task(scheduler=functools.partial(POLY, total_iters=7))
    config = task.configure_optimizers()
    assert config["lr_scheduler"]["scheduler"].total_iters == 7


def test_freeze_bn_freezes_the_backbone_only():
    task = make_task(freeze_bn=True)
    backbone_norms = [
        m for m in task.backbone.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))
    ]
    assert backbone_norms and all(isinstance(m, FrozenBatchNorm2d) for m in backbone_norms)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in task.net.head.modules())
    # Frozen statistics: a training-mode forward leaves them and the output unchanged.
    task.train()
    x = torch.randn(2, 3, 64, 64)
    before = {k: v.clone() for k, v in task.backbone.state_dict().items()}
    out1 = task.backbone(x)["layer4"]
    out2 = task.backbone(x)["layer4"]
    assert all(torch.equal(before[k], v) for k, v in task.backbone.state_dict().items())
    torch.testing.assert_close(out1, out2)


def test_frozen_bn_computes_what_the_eval_mode_batchnorm_does():
    torch.manual_seed(0)
    plain = ResNetBackbone("resnet18", output_stride=16).eval()
    for m in plain.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    task = SegmentationTask(ResNetBackbone("resnet18", output_stride=16), 3, optimizer=SGD, freeze_bn=True)
    task.backbone.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            task.train().backbone(x)["layer4"], plain(x)["layer4"], rtol=1e-4, atol=1e-4
        )


def test_bad_arguments():
    with pytest.raises(ValueError, match="task.head_lr_mult"):
        make_task(head_lr_mult=0)
    with pytest.raises(ValueError, match="task.scheduler_interval"):
        make_task(scheduler_interval="batch")
    with pytest.raises(ValueError, match="task.class_names"):
        make_task(class_names=["a", "b"])
    task = make_task()
    with pytest.raises(ValueError, match="masks Tensor\\[B, H, W\\]"):
        task.training_step((torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 30, dtype=torch.long)), 0)


def test_class_table_marks_undefined_classes():
    scores = scores_from_confusion(torch.tensor([[3, 1, 0], [0, 4, 0], [0, 0, 0]]))
    table = format_class_table(["bg", "cat", "dog"], scores)
    lines = table.splitlines()
    assert lines[1].split() == ["bg", "0.7500", "0.7500"]
    assert lines[2].split() == ["cat", "0.8000", "1.0000"]
    assert lines[3].split() == ["dog", "-", "-"]
    assert lines[4].split()[0] == "mean" and float(lines[4].split()[1]) == pytest.approx(0.775)
    assert lines[5] == "pixel accuracy 0.8750"  # fractions, as every metric dcn prints


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_logs_everything(tiny_synthetic, tmp_path):
    L.seed_everything(0)
    task = make_task(
        deform=True,
        head_lr_mult=1.0,
        num_val_images=2,
        aspp_dropout=0.0,
        optimizer=functools.partial(torch.optim.Adam, lr=2e-3),
    )
    dm = tiny_synthetic
    batch = next(iter(dm.val_dataloader()))

    def probe() -> float:
        # Training-mode loss on a fixed batch without dropout: deterministic, and unlike eval mode it
        # does not depend on BatchNorm running statistics that a few steps cannot settle.
        task.train()
        with torch.no_grad():
            return task._step(batch)[0].item()

    before = probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=[ValidationPictures(tmp_path / "val_images")],
    )
    task.train()  # Lightning keeps the modules' mode: fit must start in training mode
    trainer.fit(task, datamodule=dm)
    after = probe()
    assert after < 0.85 * before, (before, after)  # 1.81 -> 1.36 when written (8 Adam steps)
    # Offsets were trained: the deformable layers left the plain network behind.
    offsets = [m.conv_offset.weight for m in task.modules() if hasattr(m, "conv_offset")]
    assert offsets and any(w.abs().sum() > 0 for w in offsets)
    # Validation logged the split-level metrics and drew its pictures every epoch.
    assert {"val/loss", "val/mIoU", "val/pixel_acc", "val/mean_class_acc"} <= set(trainer.callback_metrics)
    pictures = sorted((tmp_path / "val_images").glob("epoch_*.png"))
    assert [p.name for p in pictures] == [f"epoch_{e:03d}.png" for e in range(4)]
    results = trainer.test(task, datamodule=dm, verbose=False)[0]
    assert {"test/loss", "test/mIoU", "test/pixel_acc", "test/mean_class_acc"} <= set(results)
    scores = task.test_scores
    assert results["test/mIoU"] == pytest.approx(scores["mIoU"].item(), rel=1e-6)
    for k, name in enumerate(dm.class_names):
        iou = scores["iou"][k].item()
        assert (f"test/IoU/{name}" in results) == (not math.isnan(iou))
