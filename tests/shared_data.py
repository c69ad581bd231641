"""Where the real datasets of the real_data tests are: ``../shared/data`` beside the repository, or
``$DCN_SHARED_DATA``. A test asks for one folder with :func:`shared_dataset`, which skips the test (naming
the path and the variable) when the folder is absent, as it is in a user's clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV = "DCN_SHARED_DATA"
ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$DCN_SHARED_DATA`` if set, else ``<repository>/../shared/data``."""
    return Path(os.environ[ENV]) if os.environ.get(ENV) else ROOT.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """``<shared data>/<name>``, or skip the calling test when it does not exist."""
    path = shared_data_dir() / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not found at {path} (set {ENV} to the folder holding it)")
    return path
