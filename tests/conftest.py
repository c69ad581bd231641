"""Shared fixtures: tiny fabricated datasets in the real on-disk formats, and Hydra composition."""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "src" / "dcn" / "conf"
if str(ROOT) not in sys.path:  # train.py lives at the repository root
    sys.path.insert(0, str(ROOT))

from dcn import resolvers  # noqa: E402

resolvers.register()

MNIST_TRAIN_PER_CLASS = 6
MNIST_TEST_PER_CLASS = 2


def mnist_pixel(label: int) -> int:
    """The value fabricated MNIST images of class ``label`` carry in their centre (pairs images and
    labels so tests can check that splitting keeps them together)."""
    return 20 + 20 * label


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX format: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, then each
    # dimension as a big-endian int32, then the data.
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path) -> Path:
    """Write tiny MNIST idx files where ``torchvision.datasets.MNIST(root)`` reads them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", MNIST_TRAIN_PER_CLASS), ("t10k", MNIST_TEST_PER_CLASS)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 10, size=(len(labels), 28, 28))
        for i, label in enumerate(labels):
            images[i, 10:18, 10:18] = mnist_pixel(label)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


IMAGE_FOLDER_CLASSES = ("cat", "dog", "emu")


def write_fake_image_folder(root: Path, classes=IMAGE_FOLDER_CLASSES, per_class: int = 2) -> Path:
    """Write ``root/{train,val,test}/<class>/<i>.png``: small RGB PNGs of varying sizes."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(20 + 3 * i, 24 + k, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def mnist_label_pixel() -> Callable[[int], int]:
    return mnist_pixel


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def image_folder_root(tmp_path_factory) -> Path:
    return write_fake_image_folder(tmp_path_factory.mktemp("image_folder"))


@pytest.fixture
def compose_train(tmp_path) -> Callable[[List[str]], DictConfig]:
    """Compose conf/train.yaml with overrides, as ``python train.py`` would, writing into tmp_path.

    The Hydra node is kept and registered with HydraConfig so ``${hydra:...}`` interpolations and
    ``hydra.runtime.choices`` work as under ``@hydra.main``; the run directory is ``tmp_path/run``.
    """

    def _compose(overrides: List[str]) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
            del cfg["hydra"]
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


def _truncate(path: Path) -> Path:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return Path(path)


@pytest.fixture
def truncate_file() -> Callable[[Path], Path]:
    """``truncate_file(path)`` cuts the file to half its bytes (a download or copy that stopped mid-way)."""
    return _truncate
