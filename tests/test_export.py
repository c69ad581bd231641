"""``python -m dcn.export``: trained networks exported to ONNX (checked in ONNX Runtime) or as a
torch.export program; model-level parity of a DCN ResNet-18 classifier and a DeepLab model; the
refusals (detection runs, a missing extra) and the non-zero exit above the tolerance."""

from __future__ import annotations

import json
import sys

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from train_runs import TINY_DIGITS

from dcn import export
from dcn.backbones import ResNetBackbone
from dcn.ops import DeformConv2dPack
from dcn.tasks.classification import ClassificationHead
from dcn.tasks.segmentation import DeepLab
from dcn.trained_task import load_trained_task

SHORT_CLASSIFICATION_RUN = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "test=false",
    *TINY_DIGITS,
]
SHORT_SEGMENTATION_RUN = [
    "experiment=deeplab_synthetic",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "test=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "task.aspp_channels=16",
    "task.decoder_channels=16",
    "data.generator.num_train=4",
    "data.generator.num_val=2",
    "data.generator.num_test=2",
    "data.generator.image_size=48",
]
SMALL_DETECTOR = [
    "experiment=frcnn_synthetic",
    "task.representation_size=32",
    "task.deform_roi_pool.hidden_channels=32",
    "task.fpn_channels=32",
]


def _train(compose_train, tmp_path, overrides):
    """The run directory of a short train.py run."""
    import train
    from dcn.results import RunRecord

    cfg = compose_train(overrides)
    record = RunRecord(cfg.paths.output_dir, cfg)
    train.train(cfg, record)
    record.finish("completed")
    return tmp_path / "run"


def _shake_offsets(model: nn.Module, std: float = 0.02) -> None:
    """Non-trivial offsets: the zero-initialised offset predictors get random weights."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DeformConv2dPack):
                weight = module.conv_offset.weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * std)
                module.conv_offset.bias.copy_(torch.randn(module.conv_offset.bias.shape, generator=generator))


def _onnx_parity(network, images, tmp_path):
    """Export through dcn.export's path with a dynamic batch; the largest |ORT - PyTorch| over the
    example batch and a single image, and the output scale."""
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    export.export_model(network, images, path, "onnx", 20, dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (images, images[:1]):
        (got,) = session.run(None, {"images": batch.numpy()})
        with torch.no_grad():
            expected = network(batch)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4)


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, num_classes)

    def forward(self, images):
        return self.head(next(reversed(self.backbone(images).values())))


@pytest.mark.parametrize("modulated", [False, True], ids=["dcn-v1", "dcn-v2"])
def test_a_dcn_resnet18_classifier_matches_in_onnx_runtime(tmp_path, modulated):
    torch.manual_seed(0)
    backbone = ResNetBackbone(
        arch="resnet18", deform={"enabled": True, "stages": [3, 4], "modulated": modulated}
    )
    network = _Classifier(backbone, 10).eval()
    _shake_offsets(network)
    _onnx_parity(network, torch.rand(3, 3, 64, 64), tmp_path)


def test_a_deeplab_model_matches_in_onnx_runtime(tmp_path):
    torch.manual_seed(0)
    backbone = ResNetBackbone(arch="resnet18", output_stride=16, deform={"enabled": True, "offset_groups": 2})
    network = DeepLab(backbone, num_classes=6, aspp_channels=32, decoder_channels=32).eval()
    _shake_offsets(network)
    _onnx_parity(network, torch.rand(2, 3, 64, 64), tmp_path)


@pytest.fixture
def classification_run(compose_train, tmp_path):
    return _train(compose_train, tmp_path, SHORT_CLASSIFICATION_RUN)


def test_a_classification_run_exports_to_onnx_and_matches(classification_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "exported" / "digits.onnx"
    assert (
        export.main([str(classification_run), "--dynamic-batch", "--batch-size", "3", "--out", str(out)]) == 0
    )
    record = json.loads((out.parent / "export.json").read_text())
    assert record["format"] == "onnx" and record["opset"] == 20 and record["task"] == "ClassificationTask"
    assert (
        record["checkpoint"]
        == json.loads((classification_run / "results.json").read_text())["best"]["checkpoint"]
    )
    assert record["inputs"] == [{"name": "images", "shape": ["batch", 1, 12, 12], "dtype": "float32"}]
    assert record["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]
    parity = record["parity"]
    assert parity["passed"] and parity["input"] == "validation images" and parity["batch_sizes"] == [3, 1]
    assert 0 <= parity["max_abs_diff"] <= parity["tolerance"]
    assert record["sizes"]["digits.onnx"] == out.stat().st_size > 0

    # The file holds the trained network: ONNX Runtime gives what the checkpoint's model gives.
    task, cfg = load_trained_task(record["checkpoint"])
    images = export.validation_images(cfg, 5)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), task(images), rtol=1e-5, atol=1e-5)


def test_a_classification_run_exports_as_a_torch_export_program(classification_run):
    # The run directory alone: its best checkpoint, output into <run dir>/export/.
    assert export.main([str(classification_run), "--format", "exported-program"]) == 0
    out = classification_run / "export" / "model.pt2"
    record = json.loads((out.parent / "export.json").read_text())
    assert record["format"] == "exported-program" and record["opset"] is None
    assert record["inputs"][0]["shape"] == [1, 1, 12, 12] and record["parity"]["max_abs_diff"] <= 1e-6
    program = torch.export.load(str(out))
    assert any("dcn.deform_conv2d" in str(node.target) for node in program.graph.nodes)


@pytest.mark.slow
def test_a_segmentation_run_exports_to_onnx_and_matches(compose_train, tmp_path):
    pytest.importorskip("onnxruntime")
    run = _train(compose_train, tmp_path, SHORT_SEGMENTATION_RUN)
    assert export.main([str(run), "--dynamic-batch", "--batch-size", "2"]) == 0
    record = json.loads((run / "export" / "export.json").read_text())
    assert record["task"] == "SegmentationTask" and record["parity"]["passed"]
    assert record["outputs"][0]["shape"] == ["batch", 6, 48, 48]


def test_above_the_tolerance_the_command_fails(classification_run, monkeypatch):
    pytest.importorskip("onnxruntime")
    run_export = export._Runner.__call__
    monkeypatch.setattr(export._Runner, "__call__", lambda self, images: run_export(self, images) + 0.01)
    assert export.main([str(classification_run)]) == 1
    record = json.loads((classification_run / "export" / "export.json").read_text())
    assert not record["parity"]["passed"] and record["parity"]["max_abs_diff"] == pytest.approx(
        0.01, rel=1e-3
    )


def test_a_detection_run_is_refused_as_not_supported_yet(compose_train, tmp_path):
    cfg = compose_train(SMALL_DETECTOR)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    backbone = hydra.utils.instantiate(cfg.backbone, in_channels=3)
    task = hydra.utils.instantiate(cfg.task, backbone=backbone, num_classes=6)
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    with pytest.raises(NotImplementedError, match="detection run is not supported yet.*torch.export"):
        export.main([str(run), "--format", "exported-program"])


def test_a_missing_export_extra_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ImportError, match=r"onnxruntime.*pip install 'dcn\[export\]'"):
        export.main([str(tmp_path)])


def test_the_checkpoint_of_a_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        export.checkpoint_of(run)
    for name in ("epoch_001.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"")
    assert export.checkpoint_of(run) == run / "checkpoints" / "last.ckpt"
    best = run / "checkpoints" / "epoch_001.ckpt"
    (run / "results.json").write_text(json.dumps({"best": {"checkpoint": str(best)}}))
    assert export.checkpoint_of(run) == best
    assert export.checkpoint_of(best) == best
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        export.checkpoint_of(tmp_path / "nowhere")


def test_bad_arguments_are_refused_before_anything_is_loaded(tmp_path):
    with pytest.raises(ValueError, match="--opset must be >= 19"):
        export.main([str(tmp_path / "nowhere"), "--opset", "18"])
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        export.main([str(tmp_path / "nowhere"), "--batch-size", "0"])
