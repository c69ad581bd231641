"""dcn.viz: sampling-point geometry checked against hand-derived values, the grid's colour, and the
command line on a real seed_net checkpoint (an image file) and on a run's own validation set (--sample)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_runs import TINY_DIGITS

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

    cfg = compose_train(
        [
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "test=false",
            *TINY_DIGITS,
        ]
    )
    record = RunRecord(cfg.paths.output_dir, cfg)
    train.train(cfg, record)
    record.finish("completed")
    checkpoint = json.loads((tmp_path / "run" / "results.json").read_text())["best"]["checkpoint"]

    image = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "offsets.png"
    assert main([checkpoint, str(image), "--point", "3,4", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_truncated_image_names_the_file(tmp_path, truncate_file):
    from PIL import Image

    from dcn.images import ImageReadError
    from dcn.viz import load_image

    path = tmp_path / "digit.png"
    Image.new("L", (28, 28), 128).save(path)
    truncate_file(path)
    with pytest.raises(ImageReadError, match=f"cannot read image {path}"):
        load_image(path, in_channels=1, size=None)


def _contrast(rgba, background: float) -> float:
    """WCAG contrast ratio of colour ``rgba`` (alpha-composited over a grey ``background`` in [0, 1])."""

    def luminance(rgb) -> float:
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    rgb = [rgba[3] * c + (1 - rgba[3]) * background for c in rgba[:3]]
    low, high = sorted((luminance(rgb), luminance([background] * 3)))
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("background", [0.0, 1.0])
def test_regular_grid_is_visible_on_dark_and_light_images(background) -> None:
    import matplotlib.pyplot as plt

    from dcn.sampling_points import draw_sampling_points

    net = _seed_net([4])
    image = torch.full((1, 12, 12), background)
    image[0, 0, 0] = 1 - background  # draw_sampling_points stretches the image to its range: keep it
    result = sampling_points(net, image)
    fig, ax = plt.subplots()
    draw_sampling_points(ax, image, result)
    (grid,) = [c for c in ax.collections if c.get_label() == "regular grid"]
    np.testing.assert_allclose(grid.get_offsets(), result.grid.numpy()[:, ::-1])  # (x, y) of each grid point
    face = grid.get_facecolor()[0]
    # The marker itself stands out (WCAG's 3:1 for graphics), whatever the rim does.
    assert _contrast(face, background) >= 3, (face, background)
    plt.close(fig)


@pytest.fixture
def digits_run(compose_train, tmp_path: Path) -> Path:
    """A fake finished run of the default experiment (seed_net, deform on, digits): its Hydra config and a
    checkpoint of random weights."""
    import hydra
    from omegaconf import OmegaConf

    cfg = compose_train(["backbone.deform.enabled=true", "data.canvas_size=12", "data.digit_size=10"])
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    backbone = hydra.utils.instantiate(cfg.backbone, in_channels=1)
    task = hydra.utils.instantiate(cfg.task, backbone=backbone, num_classes=10)
    torch.save(
        {"state_dict": task.state_dict(), "hyper_parameters": {"num_classes": 10}},
        run / "checkpoints" / "last.ckpt",
    )
    return run


def test_sample_draws_the_kth_item_of_the_runs_validation_set(
    digits_run: Path, tmp_path: Path, monkeypatch
) -> None:
    import hydra
    from omegaconf import OmegaConf

    from dcn import viz

    drawn = []
    real = viz.sampling_points
    monkeypatch.setattr(
        viz,
        "sampling_points",
        lambda backbone, image, point=None: drawn.append(image) or real(backbone, image, point),
    )
    out = tmp_path / "val3.png"
    assert main([str(digits_run), "--sample", "3", "--out", str(out)]) == 0  # a run directory
    assert out.read_bytes().startswith(b"\x89PNG")

    datamodule = hydra.utils.instantiate(OmegaConf.load(digits_run / ".hydra" / "config.yaml").data)
    datamodule.setup("validate")
    expected = datamodule.val_set[3][0]
    assert not torch.equal(expected, datamodule.val_set[2][0])  # the index decides which image
    (image,) = drawn
    torch.testing.assert_close(image, expected, rtol=0, atol=0)


def test_sample_refuses_bad_indices_and_unsafe_data_configs(digits_run: Path, tmp_path: Path, capsys) -> None:
    checkpoint = str(digits_run / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit):
        main([checkpoint, "--sample", "100000"])
    assert "--sample 100000: the run's validation set has 270 items" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([checkpoint])  # neither an image nor --sample
    assert "give an image file or --sample K" in capsys.readouterr().err

    # A config file handed over by someone else: its data group must not run arbitrary code.
    config = digits_run / ".hydra" / "config.yaml"
    text = config.read_text()
    assert "_target_: dcn.datamodules.DigitsDataModule" in text
    config.write_text(
        text.replace("_target_: dcn.datamodules.DigitsDataModule", "_target_: pathlib.Path.touch")
    )
    with pytest.raises(SystemExit):
        main([checkpoint, "--sample", "0"])
    assert "'data._target_' is 'pathlib.Path.touch'" in capsys.readouterr().err
