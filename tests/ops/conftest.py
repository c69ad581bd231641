"""Fixtures of the op tests (CPU)."""

from __future__ import annotations

import pytest


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
