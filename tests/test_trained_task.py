"""dcn.trained_task: a run's task rebuilt from its config, with the checkpoint's weights, class names,
input channels and class count, and clear errors for what does not fit."""

from __future__ import annotations

import json

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from dcn.checkpoints import CheckpointError
from dcn.tasks.classification import ClassificationTask
from dcn.tasks.detection import DetectionTask
from dcn.trained_task import find_run_config, load_trained_task

SMALL_DETECTOR = [
    "experiment=frcnn_synthetic",
    "task.representation_size=32",
    "task.deform_roi_pool.hidden_channels=32",
    "task.fpn_channels=32",
]


def _save_run(cfg, run, in_channels, num_classes, class_names=None, hydra_layout=True):
    """A finished run's folder: its config (Hydra's config.yaml or results.json) and a checkpoint
    written the way Lightning writes one (hyper-parameters, the task's on_save_checkpoint hook)."""
    (run / "checkpoints").mkdir(parents=True)
    if hydra_layout:
        (run / ".hydra").mkdir()
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    else:
        (run / "results.json").write_text(json.dumps({"config": OmegaConf.to_container(cfg, resolve=True)}))
    torch.manual_seed(1)
    backbone = hydra.utils.instantiate(cfg.backbone, in_channels=in_channels)
    task = hydra.utils.instantiate(cfg.task, backbone=backbone, num_classes=num_classes)
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    if class_names is not None:
        task.checkpoint_class_names = class_names  # as if the datamodule had named them
    task.on_save_checkpoint(checkpoint)
    path = run / "checkpoints" / "last.ckpt"
    torch.save(checkpoint, path)
    return task, path


@pytest.mark.parametrize("hydra_layout", [True, False], ids=["hydra-config", "results-json"])
def test_a_detection_run_comes_back_with_its_weights_and_class_names(compose_train, tmp_path, hydra_layout):
    cfg = compose_train(SMALL_DETECTOR)
    names = ["__background__", "disc", "ring", "square", "triangle", "cross"]
    saved, path = _save_run(cfg, tmp_path / "run", 3, 6, names, hydra_layout)
    task, config = load_trained_task(path, task_type=DetectionTask)
    assert isinstance(task, DetectionTask) and not task.training
    assert config.task.roi_pool == "deform"
    reference = saved.state_dict()
    for key, value in task.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)
    assert task.class_names() == names
    assert find_run_config(path).name == ("config.yaml" if hydra_layout else "results.json")


def test_input_channels_and_class_count_are_read_back_from_the_checkpoint(compose_train, tmp_path):
    cfg = compose_train([])  # seed_net on digits: the config says in_channels=1
    saved, path = _save_run(cfg, tmp_path / "run", in_channels=2, num_classes=7)
    task, _ = load_trained_task(path, task_type=ClassificationTask)
    assert task.backbone.in_channels == 2 and task.hparams.num_classes == 7
    x = torch.rand(3, 2, 28, 28)
    saved.eval()
    torch.testing.assert_close(task(x), saved(x))


def test_mismatches_are_named(compose_train, tmp_path):
    cfg = compose_train(SMALL_DETECTOR)
    _, path = _save_run(cfg, tmp_path / "run", 3, 6)
    with pytest.raises(TypeError, match="DetectionTask, not dcn.tasks.classification"):
        load_trained_task(path, task_type=ClassificationTask)
    other = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    other.backbone.deform.enabled = False  # another deform setting than the run's
    with pytest.raises(CheckpointError, match="last.ckpt.*conv_offset"):
        load_trained_task(path, other)
    with pytest.raises(FileNotFoundError, match="--config"):
        load_trained_task(tmp_path / "elsewhere" / "x.ckpt")
    (tmp_path / "bad.yaml").write_text("a: 1\n")
    with pytest.raises(ValueError, match="bad.yaml is not a dcn run config"):
        load_trained_task(path, tmp_path / "bad.yaml")


# ------------------------------------------------------------------------------------------
# A run directory is a file someone may hand you: it must not run code
# ------------------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize(
    "target,message",
    [
        ("os.system", "not a class dcn's configs use"),
        ("builtins.exec", "not a class dcn's configs use"),
        ("dcn.backbones.pretrained.read_state_dict", "is a function, not a class"),
    ],
)
def test_crafted_results_json_runs_no_code(compose_train, tmp_path, target, message):
    """An edited results.json whose backbone _target_ is any importable callable: refused before
    anything is built, with the key named; no marker file appears."""
    cfg = compose_train([])
    run = tmp_path / "run"
    _, path = _save_run(cfg, run, 1, 10, hydra_layout=False)
    marker = tmp_path / "pwned"
    config = json.loads((run / "results.json").read_text())
    config["config"]["backbone"] = {"_target_": target, "_args_": [f"touch {marker}"], "path": str(marker)}
    (run / "results.json").write_text(json.dumps(config))
    from dcn.instantiate import UnsafeTargetError

    with pytest.raises(UnsafeTargetError, match=rf"results.json: 'backbone._target_' .*{message}"):
        load_trained_task(path)
    assert not marker.exists()


def test_crafted_checkpoint_pickle_runs_no_code(compose_train, tmp_path):
    cfg = compose_train([])
    run = tmp_path / "run"
    task, path = _save_run(cfg, run, 1, 10)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": task.state_dict(), "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_trained_task(path)
    assert not marker.exists()


def test_configs_of_older_versions_name_moved_classes(compose_train, tmp_path):
    """A run config written before the datamodules moved into family packages still loads."""
    from dcn.instantiate import check_targets

    cfg = OmegaConf.create(
        {
            "data": {"_target_": "dcn.datamodules.voc_det.VOCDetDataModule"},
            "callbacks": {"p": {"_target_": "dcn.callbacks.SamplePredictions"}},
        }
    )
    check_targets(cfg, "old results.json")
    assert cfg.data._target_ == "dcn.datamodules.VOCDetDataModule"
    assert cfg.callbacks.p._target_ == "dcn.callbacks.ValidationPictures"
