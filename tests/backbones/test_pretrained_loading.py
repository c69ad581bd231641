"""Loading weights: plain into deformable (exactly equal at init), checkpoints, torchvision, errors."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from dcn.backbones import ResNetBackbone, SeedNet, VGGBackbone
from dcn.backbones.pretrained import adapt_input_conv


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so eval-mode outputs depend on the loaded buffers too."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    a, b = a.double().eval(), b.double().eval()
    with torch.no_grad():
        out_a, out_b = a(x.double()), b(x.double())
    assert list(out_a) == list(out_b)
    for key in out_a:
        # float64: the deformable path samples the same grid; only summation order differs.
        torch.testing.assert_close(out_b[key], out_a[key], rtol=1e-10, atol=1e-10, msg=key)


@pytest.mark.parametrize(
    "cls, kwargs, deform",
    [
        (ResNetBackbone, {"arch": "resnet18", "output_stride": 16}, {"stages": [3, 4]}),
        (ResNetBackbone, {"arch": "resnet50"}, {"stages": [4]}),
        (VGGBackbone, {"arch": "vgg11"}, {"stages": [4, 5]}),
    ],
    ids=["resnet18", "resnet50", "vgg11"],
)
def test_plain_weights_into_deformable_net_give_identical_outputs(tmp_path, cls, kwargs, deform):
    torch.manual_seed(0)
    plain = randomise_batchnorm(cls(**kwargs, deform=False))
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    deformable = cls(**kwargs, deform=deform, pretrained=str(path))
    assert deformable.deformable_layers
    report = deformable.pretrained_report
    assert report.source == str(path)
    assert set(report.loaded) == set(plain.state_dict())
    # Exactly the offset predictors were missing (and stay zero).
    assert sorted(report.new_keys) == sorted(
        f"{name}.conv_offset.{p}" for name in deformable.deformable_layers for p in ("weight", "bias")
    )
    assert all(
        torch.count_nonzero(deformable.get_submodule(n).conv_offset.weight) == 0
        for n in deformable.deformable_layers
    )
    assert_same_outputs(plain, deformable, torch.randn(2, 3, 32, 32))


def test_lightning_checkpoint_prefixes_are_stripped(tmp_path):
    torch.manual_seed(0)
    trained = randomise_batchnorm(SeedNet(1))
    with torch.no_grad():
        trained.layer4.conv.conv_offset.weight.normal_(0, 0.01)  # a trained, non-zero predictor
    head = nn.Linear(128, 10)
    state = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    # Like a dcn checkpoint: plain hyper-parameters (weights-only loadable).
    checkpoint = {"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 0.1, "class_names": ["a", "b"]}}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    loaded = SeedNet(1, pretrained=str(tmp_path / "last.ckpt"))
    assert loaded.pretrained_report.new_keys == []
    assert_same_outputs(trained, loaded, torch.randn(1, 1, 8, 8))

    # DDP / nested task prefixes too.
    torch.save(
        {f"module.model.backbone.{k}": v for k, v in trained.state_dict().items()}, tmp_path / "ddp.pt"
    )
    assert_same_outputs(trained, SeedNet(1, pretrained=str(tmp_path / "ddp.pt")), torch.randn(1, 1, 8, 8))


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "weights.pt"
    with pytest.raises(FileNotFoundError, match=f"pretrained weights file '{path}' does not exist"):
        ResNetBackbone("resnet18", pretrained=str(path))


def test_file_without_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list.pt' holds no state_dict"):
        SeedNet(1, pretrained=str(tmp_path / "list.pt"))


def test_shape_mismatch_names_path_and_keys(tmp_path):
    torch.save(SeedNet(1).state_dict(), tmp_path / "v1.pt")  # offset predictor: 18 channels
    with pytest.raises(ValueError) as err:
        SeedNet(1, deform={"modulated": True}, pretrained=str(tmp_path / "v1.pt"))  # v2: 27
    message = str(err.value)
    assert str(tmp_path / "v1.pt") in message
    assert "layer4.conv.conv_offset.weight (file (18, 128, 3, 3), model (27, 128, 3, 3))" in message
    assert "layer4.conv.conv_offset.bias (file (18,), model (27,))" in message


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    torch.save(ResNetBackbone("resnet18", deform=False).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(
        ValueError,
        match=r"r18.pt' do not fit ResNetBackbone\(resnet34\): missing from the file: "
        r"layer1.2.conv1.weight",
    ):
        ResNetBackbone("resnet34", deform=False, pretrained=str(tmp_path / "r18.pt"))
    # A deformable net's trained offsets have no place in the plain net: refusing beats dropping them.
    torch.save(SeedNet(1).state_dict(), tmp_path / "deformable.pt")
    expected = r"not in SeedNet: layer4.conv.conv_offset.weight, layer4.conv.conv_offset.bias"
    with pytest.raises(ValueError, match=expected):
        SeedNet(1, deform=False, pretrained=str(tmp_path / "deformable.pt"))


@pytest.fixture
def fake_torchvision_weights(monkeypatch):
    """torchvision's weight download replaced by a fresh torchvision resnet18's full state_dict
    (classifier head included), so tests never touch the network."""
    torch.manual_seed(0)
    reference = randomise_batchnorm(torchvision.models.resnet18())
    urls = []

    def get_state_dict(self, *args, **kwargs):
        urls.append(self.url)
        return reference.state_dict()

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", get_state_dict)
    return reference, urls


def test_torchvision_weights_load_with_head_ignored(fake_torchvision_weights):
    reference, urls = fake_torchvision_weights
    model = ResNetBackbone("resnet18", pretrained="torchvision")
    assert urls == [torchvision.models.ResNet18_Weights.DEFAULT.url]
    report = model.pretrained_report
    assert report.source == "torchvision:resnet18"
    assert sorted(report.ignored_keys) == ["fc.bias", "fc.weight"]
    trunk = nn.Sequential(*list(reference.children())[:-2]).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.double().eval()(x)["layer4"], trunk(x), rtol=1e-10, atol=1e-10)


def test_single_channel_stem_sums_rgb_weights(fake_torchvision_weights):
    grey = ResNetBackbone("resnet18", in_channels=1, deform=False, pretrained="torchvision")
    rgb = ResNetBackbone("resnet18", in_channels=3, deform=False, pretrained="torchvision")
    assert grey.pretrained_report.adapted_keys == ["conv1.weight"]
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        a = grey.double().eval()(x)["layer4"]
        b = rgb.double().eval()(x.repeat(1, 3, 1, 1))["layer4"]
    # The summed stem weight was stored in float32 (the model's dtype at load): float32 rounding.
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())
    # ...and it is not a coincidence of a weak stem: other adaptations differ by far more.
    with torch.no_grad():
        grey.conv1.weight.copy_(rgb.conv1.weight[:, :1] * 3)
        c = grey(x)["layer4"]
    assert not torch.allclose(c, b, rtol=1e-2, atol=1e-2 * b.abs().max().item())


def test_small_stem_skips_the_7x7_stem_and_loads_the_rest(fake_torchvision_weights):
    reference, _ = fake_torchvision_weights
    model = ResNetBackbone("resnet18", stem="small", deform=False, pretrained="torchvision")
    assert "conv1.weight" in model.pretrained_report.ignored_keys
    assert model.conv1.weight.shape == (64, 3, 3, 3)
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)


def test_unreachable_download_explains_the_offline_route(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    expected = r"could not download .* pass its path \(pretrained=/path/to/vgg11_bn-6002323d.pth\)"
    with pytest.raises(RuntimeError, match=expected):
        VGGBackbone("vgg11", pretrained="torchvision")


def test_adapt_input_conv():
    w = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(adapt_input_conv(w, 1), w[:, 0:1] + w[:, 1:2] + w[:, 2:3])
    assert adapt_input_conv(w, 3) is w
    five = adapt_input_conv(w, 5)
    torch.testing.assert_close(five, torch.cat([w, w[:, :2]], dim=1) * 0.6)


def test_checkpoint_with_pickled_objects_is_refused_with_the_way_out(tmp_path):
    """A checkpoint whose hyper-parameters are Python objects (OmegaConf, as some frameworks save
    them) needs full unpickling: refused, with the file named and the conversion command."""
    state = {f"backbone.{k}": v for k, v in SeedNet(1).state_dict().items()}
    torch.save(
        {"state_dict": state, "hyper_parameters": {"cfg": OmegaConf.create({"lr": 0.1})}},
        tmp_path / "foreign.ckpt",
    )
    with pytest.raises(
        ValueError,
        match=r"foreign.ckpt' holds Python objects besides tensors.*backbone.pretrained=weights.pt",
    ):
        SeedNet(1, pretrained=str(tmp_path / "foreign.ckpt"))


class _Exploit:
    """Unpickling this runs os.system: the classic malicious-pickle payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_crafted_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": SeedNet(1).state_dict(), "payload": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        SeedNet(1, pretrained=str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_no_unsafe_torch_load_in_the_package():
    """No weights_only=False anywhere in src/: every torch.load is weights-only."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    offenders = [
        f"{p}:{i}"
        for p in src.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"weights_only\s*=\s*False", line)
    ]
    assert offenders == []
