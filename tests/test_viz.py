"""dcn.viz: sampling-point geometry checked against hand-derived values, and the command line on a
real seed_net checkpoint."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcn.backbones import SeedNet
from dcn.viz import main, sampling_points


def _seed_net(stages, modulated: bool = False) -> SeedNet:
    torch.manual_seed(0)
    return SeedNet(in_channels=1, deform={"enabled": True, "stages": stages, "modulated": modulated}).eval()


def _set_constant_offset(net: SeedNet, dy: float, dx: float) -> None:
    for layer in net.deformable_layers:
        conv = net.get_submodule(layer)
        k = conv.kernel_size[0] * conv.kernel_size[1]
        with torch.no_grad():
            conv.conv_offset.bias[: 2 * k : 2] = dy
            conv.conv_offset.bias[1 : 2 * k : 2] = dx


def test_zero_offsets_give_the_regular_grid() -> None:
    net = _seed_net([3, 4])  # two stacked 3x3 deformable layers: 81 points
    result = sampling_points(net, torch.rand(1, 16, 16), point=(5, 9))
    assert result.unit_index == (5, 9) and result.layers == ["layer3.conv", "layer4.conv"]
    expected = sorted(
        (5 + a + b, 9 + c + d) for a, b, c, d in itertools.product((-1, 0, 1), repeat=4)
    )  # each layer adds a (-1..1) x (-1..1) step at stride 1
    assert sorted(map(tuple, result.points.round().int().tolist())) == expected
    torch.testing.assert_close(result.points, result.grid)
    assert torch.all(result.weights == 1)


def test_constant_offsets_shift_every_point_once_per_layer() -> None:
    net = _seed_net([3, 4])
    _set_constant_offset(net, dy=0.75, dx=-0.5)
    result = sampling_points(net, torch.rand(1, 16, 16), point=(8, 8))
    assert len(result.points) == 81
    # Away from the border the offset field is the bias everywhere: two layers, two shifts.
    torch.testing.assert_close(result.points, result.grid + torch.tensor([1.5, -1.0]), atol=1e-5, rtol=0)


def test_modulated_weights_are_products_of_masks() -> None:
    net = _seed_net([4], modulated=True)
    result = sampling_points(net, torch.rand(1, 12, 12))
    assert result.unit_index == (5, 5)
    torch.testing.assert_close(result.weights, torch.full((9,), 0.5))  # sigmoid(0) at init


def test_plain_network_is_refused() -> None:
    plain = SeedNet(in_channels=1, deform={"enabled": False})
    with pytest.raises(ValueError, match="no DeformConv2dPack"):
        sampling_points(plain, torch.rand(1, 8, 8))


@pytest.mark.slow
def test_command_line_writes_png_for_a_seed_net_checkpoint(compose_train, tmp_path: Path) -> None:
    import train
    from dcn.results import RunRecord

    cfg = compose_train([
        "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
        "test=false", "data.canvas_size=12", "data.digit_size=10",
        "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
    ])  # fmt: skip
    record = RunRecord(cfg.paths.output_dir, cfg)
    train.train(cfg, record)
    record.finish("completed")
    checkpoint = json.loads((tmp_path / "run" / "results.json").read_text())["best"]["checkpoint"]

    image = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "offsets.png"
    assert main([checkpoint, str(image), "--point", "3,4", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_truncated_image_names_the_file(tmp_path):
    from PIL import Image

    from conftest import truncate_file
    from dcn.images import ImageReadError
    from dcn.viz import load_image

    path = tmp_path / "digit.png"
    Image.new("L", (28, 28), 128).save(path)
    truncate_file(path)
    with pytest.raises(ImageReadError, match=f"cannot read image {path}"):
        load_image(path, in_channels=1, size=None)
