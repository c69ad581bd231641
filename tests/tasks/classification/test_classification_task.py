import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dcn.backbones import SeedNet
from dcn.tasks.classification import ClassificationHead, ClassificationTask


def _task(num_classes=10, deform=True, **kwargs):
    return ClassificationTask(
        SeedNet(in_channels=1, deform={"enabled": deform}),
        num_classes=num_classes,
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3),
        **kwargs,
    )


@pytest.mark.parametrize("deform", [True, False])
def test_seed_net_with_the_head_has_the_seeds_parameter_count(deform):
    # The original study's Experiment-1 network: 262,876 parameters with deform on. With it off, only the
    # offset predictor (3x3 conv 128 -> 18 with bias) is gone.
    offset_predictor = 128 * 18 * 9 + 18
    expected = 262_876 if deform else 262_876 - offset_predictor
    assert sum(p.numel() for p in _task(deform=deform).parameters()) == expected


def test_head_pools_the_deepest_feature():
    head = ClassificationHead(4, 3)
    features = torch.rand(2, 4, 5, 6)
    torch.testing.assert_close(head(features), head.fc(features.mean((2, 3))))


def test_forward_gives_logits_per_class():
    assert _task(num_classes=7)(torch.rand(3, 1, 8, 8)).shape == (3, 7)


def test_top5_accuracy_only_with_at_least_ten_classes():
    assert "val/acc_top5" in _task(num_classes=10).val_metrics.keys(keep_base=False)
    assert "val/acc_top5" not in _task(num_classes=9).val_metrics.keys(keep_base=False)


def test_label_smoothing_reaches_the_loss():
    logits, targets = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0])
    plain, smooth = _task(3).criterion, _task(3, label_smoothing=0.3).criterion
    assert smooth(logits, targets) > plain(logits, targets)


def test_bad_batches_and_arguments_are_explained():
    task = _task()
    with pytest.raises(ValueError, match=r"images Tensor\[B, C, H, W\], targets Tensor\[B\]"):
        task.training_step((torch.rand(1, 8, 8), torch.tensor([1])), 0)
    with pytest.raises(ValueError, match="num_classes"):
        _task(num_classes=1)
    with pytest.raises(ValueError, match="task.label_smoothing"):
        _task(label_smoothing=1.0)
    with pytest.raises(ValueError, match="task.monitor_mode"):
        _task(monitor_mode="up")


class _TinyBackbone(torch.nn.Module):
    """A one-conv backbone keeping the dcn contract (ordered dict of features, out_channels): the
    toy fit below tests the task's loss/optimizer/metric chain, quickly."""

    out_channels = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x):
        return {"conv": torch.relu(self.conv(x))}


def test_fit_learns_a_separable_toy_problem_and_logs_the_shared_metric_names(tmp_path):
    # Four textures (flat, horizontal stripes, vertical stripes, checkerboard) plus noise: a 3x3 conv
    # and global pooling separate them, so a working loss/optimizer/metric chain gets all right.
    torch.manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    textures = torch.stack([torch.zeros(8, 8), rows % 2, cols % 2, (rows + cols) % 2]).float()
    targets = torch.arange(32) % 4
    images = (textures[targets] + 0.1 * torch.rand(32, 8, 8)).unsqueeze(1)
    data = TensorDataset(images, targets)
    train, evaluate = DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=32)
    task = ClassificationTask(_TinyBackbone(), 4, functools.partial(torch.optim.AdamW, lr=3e-2))
    trainer = L.Trainer(
        max_epochs=15,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, train, evaluate)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(metrics)
    assert metrics["val/acc"] == 1.0
    (result,) = trainer.test(task, evaluate, verbose=False)
    assert set(result) == {"test/loss", "test/acc"} and result["test/acc"] == 1.0


def test_scheduler_is_built_on_the_optimizer_and_monitors_the_task_metric():
    task = _task(
        scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="max"),
        monitor="val/acc",
    )
    config = task.configure_optimizers()
    assert config["lr_scheduler"]["scheduler"].optimizer is config["optimizer"]
    assert config["lr_scheduler"]["monitor"] == "val/acc"
