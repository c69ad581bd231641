"""What the four tasks share (dcn.tasks.base.DcnTask): plain hyper-parameters that survive a
weights-only checkpoint load, optimizer groups with learning-rate multipliers, class names in
checkpoints, the common constructor checks and the validation-picture hook."""

from __future__ import annotations

import functools

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from dcn.backbones import ResNetBackbone, SeedNet
from dcn.tasks.base import DcnTask, plain
from dcn.tasks.classification import ClassificationTask
from dcn.tasks.detection import DetectionTask
from dcn.tasks.segmentation import SegmentationTask
from dcn.tasks.tracking import TrackingTask

SGD = functools.partial(torch.optim.SGD, lr=0.01)


def _as_hydra_hands_them_over(**kwargs):
    """Lists and mappings as Hydra passes config values: ListConfig / DictConfig."""
    return {k: OmegaConf.create(v) if isinstance(v, (list, dict)) else v for k, v in kwargs.items()}


def _segmentation(**kwargs):
    backbone = ResNetBackbone("resnet18", output_stride=16, deform={"enabled": True})
    return SegmentationTask(
        backbone,
        num_classes=3,
        optimizer=SGD,
        aspp_channels=8,
        decoder_channels=8,
        low_level_channels=4,
        **kwargs,
    )


TASKS = {
    "classification": lambda **kw: ClassificationTask(
        SeedNet(in_channels=1), num_classes=3, optimizer=SGD, **kw
    ),
    "segmentation": _segmentation,
    "detection": lambda **kw: DetectionTask(
        ResNetBackbone("resnet18"),
        num_classes=3,
        optimizer=SGD,
        fpn_channels=16,
        representation_size=32,
        min_size=64,
        max_size=64,
        **kw,
    ),
    "tracking": lambda **kw: TrackingTask(
        ResNetBackbone("resnet18", output_stride=8), optimizer=SGD, channels=16, **kw
    ),
}
LIST_OVERRIDES = {
    "classification": dict(class_names=["a", "b", "c"]),
    "segmentation": dict(class_names=["bg", "x", "y"], aspp_rates=[2, 4, 6]),
    "detection": dict(
        class_names=["bg", "x", "y"],
        fpn_features=["layer3", "layer4"],
        rpn={"pre_nms_top_n_test": 50},
        metrics=["voc"],
    ),
    "tracking": dict(ratios=[0.5, 1.0, 2.0], tracker={"penalty_k": 0.1}),
}


def _is_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


@pytest.mark.parametrize("name", list(TASKS))
def test_hparams_are_plain_and_load_weights_only(name, tmp_path):
    """List- and mapping-valued overrides (task.aspp_rates=[...], task.class_names=[...]) arrive as
    ListConfig / DictConfig; the hyper-parameters hold plain values, so a checkpoint of them loads
    with torch.load(weights_only=True), as Lightning loads checkpoints."""
    task = TASKS[name](**_as_hydra_hands_them_over(**LIST_OVERRIDES[name]))
    hparams = dict(task.hparams)
    assert _is_plain(hparams), {k: type(v).__name__ for k, v in hparams.items()}
    assert not {"backbone", "optimizer", "scheduler"} & set(hparams)
    path = tmp_path / "hparams.ckpt"
    torch.save({"hyper_parameters": hparams, "class_names": task.class_names()}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["hyper_parameters"] == hparams
    for key, value in LIST_OVERRIDES[name].items():
        if key in ("rpn", "tracker"):
            assert {k: hparams[key][k] for k in value} == value
        else:
            assert hparams[key] == value


def test_lightning_checkpoint_round_trip_with_list_overrides(tmp_path):
    """A real Lightning checkpoint of a task built with ListConfig arguments: loads weights-only,
    restores the task with the same hyper-parameters and class names."""
    task = TASKS["classification"](**_as_hydra_hands_them_over(class_names=["a", "b", "c"]), num_val_images=0)
    data = TensorDataset(torch.rand(8, 1, 12, 12), torch.randint(0, 3, (8,)))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert saved["class_names"] == ["a", "b", "c"] and saved["hyper_parameters"]["class_names"] == [
        "a",
        "b",
        "c",
    ]
    restored = ClassificationTask.load_from_checkpoint(
        path, backbone=SeedNet(in_channels=1), optimizer=SGD, weights_only=True
    )
    assert dict(restored.hparams) == dict(task.hparams)
    assert restored.checkpoint_class_names == ["a", "b", "c"]


def test_learning_rate_multipliers_and_groups():
    seg = _segmentation(head_lr_mult=10.0)
    lrs = {g["name"]: g["lr"] for g in seg.configure_optimizers()["optimizer"].param_groups}
    assert lrs == {"backbone": pytest.approx(0.01), "head": pytest.approx(0.1)}
    track = TASKS["tracking"](backbone_lr_mult=0.1)
    lrs = {g["name"]: g["lr"] for g in track.configure_optimizers()["optimizer"].param_groups}
    assert lrs == {"head": pytest.approx(0.01), "backbone": pytest.approx(0.001)}
    frozen_backbone = TASKS["tracking"](backbone_lr_mult=0.0)
    groups = frozen_backbone.configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["head"]
    single = TASKS["classification"]().configure_optimizers()["optimizer"].param_groups
    assert len(single) == 1 and sum(p.numel() for p in single[0]["params"]) == sum(
        p.numel() for p in TASKS["classification"]().parameters()
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(monitor_mode="best"), "monitor_mode must be 'max' or 'min'"),
        (dict(monitor=""), "task.monitor must name a logged metric"),
        (dict(scheduler_interval="batch"), "scheduler_interval must be 'epoch' or 'step'"),
        (dict(num_val_images=-1), "num_val_images must be an integer >= 0"),
        (dict(class_names=["only", "two"]), "class_names lists 2 names for num_classes=3"),
    ],
)
@pytest.mark.parametrize("name", ["classification", "segmentation", "detection"])
def test_shared_constructor_checks(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TASKS[name](**kwargs)


@pytest.mark.parametrize(
    "name,builder,defaults",
    [
        (
            "detection",
            "build_faster_rcnn",
            dict(pool_size=7, sampling_ratio=2, layout="fpn", frozen_stages=-1),
        ),
        ("segmentation", "DeepLab", dict(head="deeplabv3plus", aspp_dropout=0.1, aspp_rates=None)),
    ],
)
def test_network_options_come_from_the_builder(name, builder, defaults):
    # The builder's signature names and defaults the network options: every one is recorded (the
    # checkpoint says what it was built with), overrides among them, and a misspelt one is an error.
    task = TASKS[name]()
    for key, value in defaults.items():
        assert task.hparams[key] == value
    assert "model_options" not in task.hparams and "optimizer" not in task.hparams
    with pytest.raises(ValueError, match=rf"unknown task option\(s\) \['aspp_rate'\].*{builder}\) takes: "):
        TASKS[name](aspp_rate=[1])


def test_tracking_gets_the_shared_defaults_it_does_not_list():
    hp = TASKS["tracking"]().hparams
    assert (hp.num_classes, hp.class_names, hp.num_val_images, hp.scheduler_interval) == (
        None,
        None,
        0,
        "epoch",
    )
    assert (hp.monitor, hp.monitor_mode) == ("val/loss", "min")


def test_class_agnostic_task_has_no_class_names():
    task = TASKS["tracking"]()
    assert task.class_names() == []
    checkpoint = {}
    task.on_save_checkpoint(checkpoint)
    assert "class_names" not in checkpoint


def test_plain_converts_nested_configs():
    cfg = OmegaConf.create({"a": [1, {"b": (2, 3)}], "c": {"d": [4]}})
    assert plain(cfg) == {"a": [1, {"b": [2, 3]}], "c": {"d": [4]}}
    assert plain((1, [2, (3,)])) == [1, [2, [3]]]


@pytest.mark.parametrize("name", ["classification", "segmentation", "detection"])
def test_validation_picture(name):
    """Each task draws its predictions for a few validation items (as the dataset returns them)."""
    task = TASKS[name](num_val_images=2).eval()
    if name == "classification":
        items = [(torch.rand(1, 12, 12), 1), (torch.rand(1, 12, 12), 2)]
    elif name == "segmentation":  # different sizes: rows are padded to the widest
        items = [
            (torch.rand(3, 32, 32), torch.randint(0, 3, (32, 32))),
            (torch.rand(3, 32, 48), torch.randint(0, 3, (32, 48))),
        ]
    else:
        target = {"boxes": torch.tensor([[2.0, 3.0, 20.0, 30.0]]), "labels": torch.tensor([1])}
        items = [(torch.rand(3, 48, 40), target), (torch.rand(3, 40, 48), target)]
    with torch.no_grad():
        picture = task.validation_picture(items)
    if isinstance(picture, np.ndarray):
        assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[0] == 64
        assert picture.shape[1] == 3 * 48
    else:
        import matplotlib.pyplot as plt

        assert len(picture.axes) >= 2
        plt.close(picture)


def test_tracking_draws_no_validation_picture():
    assert TASKS["tracking"]().validation_picture([]) is None
    assert DcnTask.validation_picture(TASKS["tracking"](), []) is None
