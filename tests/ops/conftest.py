"""Fixtures of the op tests (CPU)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(params=["kernel", "aten"])
def cpu_path(request, monkeypatch):
    """Run a test on dcn's compiled C++ CPU kernels and on the pure-ATen implementation that runs
    where they cannot be built."""
    from dcn.ops import _cpu_kernel

    if request.param == "aten":
        monkeypatch.setattr(_cpu_kernel, "load", lambda: None)
    elif _cpu_kernel.load() is None:
        pytest.fail(f"the CPU kernel did not build: {_cpu_kernel._failed}")
    return request.param


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms(True)`` for the test."""
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.fixture
def two_threads():
    """Two intra-op threads for the test, so that parallel kernels split the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)
