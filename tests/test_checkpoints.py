"""dcn.checkpoints: unreadable, foreign and mismatching checkpoints fail with the file's name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dcn.backbones import SeedNet
from dcn.checkpoints import CheckpointError, check_checkpoint, load_checkpoint
from dcn.tasks.classification import ClassificationTask


def _task(deform: bool) -> ClassificationTask:
    backbone = SeedNet(in_channels=1, deform={"enabled": deform})
    return ClassificationTask(backbone, num_classes=10, optimizer=torch.optim.SGD)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A Lightning-style checkpoint of a deformable seed_net classifier."""
    path = tmp_path / "epoch_000.ckpt"
    torch.save({"epoch": 0, "global_step": 3, "state_dict": _task(deform=True).state_dict()}, path)
    return path


def test_matching_checkpoint_loads(checkpoint: Path) -> None:
    loaded = check_checkpoint(checkpoint, _task(deform=True))
    assert loaded["global_step"] == 3


def test_truncated_checkpoint_names_the_file(checkpoint: Path, tmp_path: Path) -> None:
    data = checkpoint.read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"cannot read checkpoint .*truncated\.ckpt .*truncated or corrupt"
    ):
        load_checkpoint(bad)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt")
    weights = tmp_path / "weights.pt"
    torch.save(SeedNet(in_channels=1).state_dict(), weights)
    with pytest.raises(
        CheckpointError, match=r"weights\.pt is not a Lightning checkpoint.*backbone\.pretrained"
    ):
        load_checkpoint(weights)


def test_mismatch_names_file_and_keys(checkpoint: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(checkpoint, _task(deform=False))
    message = str(info.value)
    assert str(checkpoint) in message
    assert "not in the model: backbone.layer4.conv.conv_offset.bias" in message
    assert "another backbone.deform setting" in message

    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["head.fc.weight"] = torch.zeros(5, 128)
    torch.save(state, checkpoint)
    expected = r"shape mismatch: head\.fc\.weight \(checkpoint \(5, 128\), model \(10, 128\)\)"
    with pytest.raises(CheckpointError, match=expected):
        check_checkpoint(checkpoint, _task(deform=True))


def test_mismatch_names_what_wrote_the_checkpoint(tmp_path: Path) -> None:
    """dcn checkpoints record what built them: a checkpoint used with the wrong config is named for
    what it is (task, backbone, deform setting), not guessed from its keys."""
    written = _task(deform=True)
    path = tmp_path / "last.ckpt"
    checkpoint = {"state_dict": written.state_dict()}
    written.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(path, _task(deform=False))
    message = str(info.value)
    assert (
        "written by a ClassificationTask with a SeedNet backbone, deform on (stages [4], v1, "
        "offset_groups 1); this config builds a ClassificationTask with a SeedNet backbone, deform off "
        "(they differ in: deform)"
    ) in message

    from dcn.backbones import ResNetBackbone
    from dcn.tasks.segmentation import SegmentationTask

    other = SegmentationTask(
        ResNetBackbone("resnet18", output_stride=16),
        num_classes=3,
        optimizer=torch.optim.SGD,
        aspp_channels=8,
        decoder_channels=8,
        low_level_channels=4,
    )
    with pytest.raises(
        CheckpointError,
        match=r"this config builds a SegmentationTask with a ResNetBackbone resnet18 "
        r"backbone, deform on .*\(they differ in: task, backbone, arch\)",
    ):
        check_checkpoint(path, other)
