"""mnist_scaled: MNIST's test file read (gzip or not), split train / val / test, test digits zoomed about the
centre, one test loader per scale; and on the real file of ../shared/data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_data import shared_dataset

from dcn.datamodules import ScaledMNISTDataModule
from dcn.datamodules.classification.mnist_scaled import (
    DEFAULT_SCALES,
    read_idx,
    scale_about_centre,
    scale_name,
)


def write_t10k(root: Path, per_class: int = 20, compress: bool = True) -> Path:
    """``<root>/MNIST/raw/t10k-*`` with ``10 * per_class`` digits: class k is a square of value 10 + 20k."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 8:20, 8:20] = 10 + 20 * label
    for name, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        data = (
            struct.pack(">HBB", 0, 0x08, array.ndim)
            + struct.pack(f">{array.ndim}I", *array.shape)
            + array.tobytes()
        )
        if compress:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return root


def make_dm(root, **kwargs) -> ScaledMNISTDataModule:
    options = dict(test_size=40, val_size=20, batch_size=8, normalize=False)
    options.update(kwargs)
    return ScaledMNISTDataModule(root, **options)


@pytest.mark.parametrize("compress", [True, False])
def test_reads_the_test_file_gzipped_or_not(tmp_path, compress):
    dm = make_dm(write_t10k(tmp_path, compress=compress))
    images, labels = dm.read_test_file()
    assert images.shape == (200, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and torch.equal(images[:, 0, 14, 14].long(), 10 + 20 * labels)


def test_split_is_stratified_disjoint_fixed_and_keeps_test_apart_from_val_size(tmp_path):
    dm = make_dm(write_t10k(tmp_path))
    _, labels = dm.read_test_file()
    train, val, test = dm.split(labels)
    assert (len(train), len(val), len(test)) == (140, 20, 40)
    assert len(set(train) | set(val) | set(test)) == 200
    assert np.bincount(labels[test].numpy(), minlength=10).tolist() == [4] * 10
    again = dm.split(labels)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    # The test set is drawn first: another validation size leaves it unchanged.
    assert np.array_equal(make_dm(tmp_path, val_size=30).split(labels)[2], test)
    assert not np.array_equal(make_dm(tmp_path, split_seed=1).split(labels)[2], test)


def test_one_test_loader_per_scale_with_the_same_digits(tmp_path):
    dm = make_dm(write_t10k(tmp_path))
    dm.setup()
    assert dm.test_set_names == [scale_name(s) for s in DEFAULT_SCALES]
    assert dm.test_set_names[0] == "scale0.5" and dm.test_set_names[5] == "scale1.0"
    loaders = dm.test_dataloader()
    assert len(loaders) == 11 and all(len(loader.dataset) == 40 for loader in loaders)
    targets = [loader.dataset.tensors[1] for loader in loaders]
    assert all(torch.equal(t, targets[0]) for t in targets)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64
    # Training and validation digits are not scaled: their squares keep the 12-pixel side.
    side = (dm.val_set.tensors[0][0, 0] > 0).sum(dim=0).max()
    assert side == 12


def test_scaling_zooms_about_the_centre_with_black_fill(tmp_path):
    square = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    square[..., 8:20, 8:20] = 200  # a 12-pixel square centred on the canvas centre (13.5, 13.5)
    half, double = scale_about_centre(square, 0.5), scale_about_centre(square, 2.0)
    rows = (half[0, 0] > 0).any(dim=1).nonzero().flatten()
    assert len(rows) == 6 and rows.float().mean() == pytest.approx(13.5)
    assert (double[0, 0] > 0).sum() == 24 * 24 and double[0, 0, 0, 0] == 0
    assert half[0, 0, 0, 0] == 0 and torch.equal(scale_about_centre(square, 1.0), square)


def test_normalisation_makes_every_background_pixel_equal(tmp_path):
    dm = make_dm(write_t10k(tmp_path), normalize=True)
    dm.setup()
    small = dm.test_sets[0].tensors[0]  # x0.5: the uncovered border must look like the rest of the background
    assert small[:, :, 0, 0].unique().tolist() == pytest.approx([-0.1307 / 0.3081])
    assert small[:, :, 14, 0].unique().tolist() == pytest.approx([-0.1307 / 0.3081])


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\[\.gz\] not found"):
        make_dm(tmp_path).setup()
    with pytest.raises(ValueError, match="data.scales"):
        make_dm(tmp_path, scales=[0.5, 0])
    with pytest.raises(ValueError, match="twice"):
        make_dm(tmp_path, scales=[0.5, 0.5])
    with pytest.raises(ValueError, match="interpolation"):
        make_dm(tmp_path, interpolation="cubic")
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))
    with pytest.raises(ValueError, match=r"bad\.gz: the header says \[5\] values"):
        read_idx(bad)


@pytest.mark.real_data
def test_real_mnist_test_file_reads_and_splits_8000_2000():
    dm = ScaledMNISTDataModule(shared_dataset("mnist"))
    images, labels = dm.read_test_file()
    assert images.shape == (10_000, 1, 28, 28)
    # The official test set's class counts (LeCun et al.).
    assert np.bincount(labels.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (7000, 1000)
    assert [len(s) for s in dm.test_sets] == [2000] * 11
    unscaled = dm.test_sets[dm.scales.index(1.0)].tensors[0]
    # Smaller digits leave more background: the mean ink grows with the scale.
    ink = [float((s.tensors[0] > 0).float().mean()) for s in dm.test_sets]
    assert ink == sorted(ink) and ink[0] < 0.5 * ink[5]
    assert unscaled.shape == (2000, 1, 28, 28)
