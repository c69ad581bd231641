"""python -m dcn.offset_spread: the spread of deformable sampling points, its correlation with digit scale,
and the command on a tiny trained mnist_scaled run."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

import train
from dcn.backbones import FiveConvNet
from dcn.offset_spread import main, point_spread, spread_by_scale, summarize_spread
from dcn.ops import DeformConv2dPack
from dcn.results import RunRecord
from dcn.sampling_points import SamplingPoints


def test_point_spread_is_the_rms_distance_from_the_unit():
    points = torch.tensor([[0.0, 3.0], [4.0, 0.0], [0.0, -3.0], [-4.0, 0.0]]) + torch.tensor([10.0, 10.0])
    result = SamplingPoints(points, torch.ones(4), points / 2, (10.0, 10.0), (0, 0), ["layer"])
    assert point_spread(result) == pytest.approx(np.sqrt((9 + 16 + 9 + 16) / 4))
    assert point_spread(result, grid=True) == pytest.approx(
        float(((points / 2 - 10) ** 2).sum(1).mean().sqrt())
    )


def test_zero_offsets_spread_like_the_grid_and_outward_offsets_spread_more():
    torch.manual_seed(0)
    net = FiveConvNet(1, deform={"stages": [4, 5]}).eval()  # offset predictors start at zero
    images = [torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28)]
    spread, grid = spread_by_scale(net, images)
    assert spread.shape == (2, 3) and grid > 0
    np.testing.assert_allclose(spread, grid, rtol=1e-5)
    # Dilate every kernel: offsets (dy, dx) = (ky - 1, kx - 1) move each sampling point one more step outward.
    for layer in (m for m in net.modules() if isinstance(m, DeformConv2dPack)):
        ky, kx = torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij")
        layer.conv_offset.bias.data = torch.stack([ky - 1, kx - 1], dim=-1).reshape(-1)
    wider, _ = spread_by_scale(net, images)
    assert (wider > grid * 1.5).all()


def test_summary_reports_per_scale_means_and_the_correlation():
    scales = [0.5, 1.0, 1.5]
    spread = np.array([[1.0, 1.2, 0.8], [2.0, 2.2, 1.8], [3.0, 3.2, 2.8]])
    summary = summarize_spread(scales, spread, grid_spread=2.0)
    assert [row["mean"] for row in summary["per_scale"]] == pytest.approx([1.0, 2.0, 3.0])
    assert summary["per_scale"][0]["ratio_to_grid"] == pytest.approx(0.5)
    assert summary["pearson_r"] > 0.9 and summary["slope_px_per_scale"] == pytest.approx(2.0)
    assert summary["pairs"] == 9
    assert summary["pearson_r_within_digit"] == pytest.approx(1.0)


def _write_t10k(root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = np.tile(np.arange(10, dtype=np.uint8), 8)
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 6 + label : 16 + label, 9:19] = 255
    for name, array in (("t10k-images-idx3-ubyte.gz", images), ("t10k-labels-idx1-ubyte.gz", labels)):
        header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        (raw / name).write_bytes(gzip.compress(header + array.tobytes()))
    return root


def test_command_on_a_tiny_trained_run_writes_numbers_and_figures(compose_train, tmp_path, capsys):
    cfg = compose_train(
        [
            "experiment=mnist_scaled",
            "trainer=cpu",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "callbacks.progress_bar=null",
            "callbacks.validation_pictures=null",
            "logger=[]",
        ]
    )
    with open_dict(cfg):
        cfg.data.update(root=str(_write_t10k(tmp_path / "data")), test_size=20, val_size=10, batch_size=8)
    record = RunRecord(cfg.paths.output_dir, cfg)
    train.train(cfg, record)
    record.finish("completed")
    out = tmp_path / "spread"
    assert main([cfg.paths.output_dir, "--images", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "offset_spread.json").read_text())
    assert [row["scale"] for row in summary["per_scale"]] == pytest.approx(list(cfg.data.scales))
    assert all(row["n"] == 3 and row["mean"] > 0 for row in summary["per_scale"])
    assert summary["deformable_layers"] == ["layer4.conv", "layer5.conv"]
    assert (out / "offset_spread.png").stat().st_size > 0 and (out / "offset_points.png").stat().st_size > 0
    assert "Pearson r" in capsys.readouterr().out
