"""Shared fixtures: backbones built from conf/backbone/*.yaml, once per test session.

Building resnet101 costs seconds on a small CPU, so every test that wants "each config's
backbone" shares these instances (tests must not modify them).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF_DIR = Path(__file__).resolve().parents[2] / "src" / "dcn" / "conf"


def compose_backbone(name: str, *overrides: str):
    """The ``backbone`` node of conf/ composed as the command line would (``backbone=<name>``)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=None, overrides=[f"+backbone={name}", *overrides])
    return cfg.backbone


@functools.lru_cache(maxsize=None)
def _built(name: str):
    return instantiate(compose_backbone(name)).eval()


@pytest.fixture(scope="session", name="compose_backbone")
def compose_backbone_fixture():
    """``compose_backbone(name, *overrides)`` -> the composed ``backbone`` config node."""
    return compose_backbone


@pytest.fixture(scope="session")
def config_backbone():
    """``config_backbone(name)`` -> the (cached, eval-mode) backbone instantiated from
    conf/backbone/<name>.yaml with its defaults."""
    return _built
