"""The CPU kernel's build: one line when it compiles, a warning naming what is missing when it cannot,
and the PyTorch path's same results after that."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import torch.utils.cpp_extension

from dcn.ops import _cpu_kernel, deform_conv2d


@pytest.fixture
def fresh_kernel(monkeypatch):
    """_cpu_kernel as if nothing had been loaded in this process."""
    monkeypatch.setattr(_cpu_kernel, "_module", None)
    monkeypatch.setattr(_cpu_kernel, "_failed", None)
    monkeypatch.delenv("DCN_CPU_KERNEL", raising=False)


def _failing_build(**kwargs):
    raise RuntimeError("Ninja is required to load C++ extensions")


def test_failed_build_warns_with_what_is_missing_and_falls_back(fresh_kernel, monkeypatch):
    monkeypatch.setattr(torch.utils.cpp_extension, "load", _failing_build)
    monkeypatch.setattr(_cpu_kernel.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "ninja", None)  # `import ninja` fails
    with pytest.warns(RuntimeWarning) as record:
        assert _cpu_kernel.load() is None
    message = str(record[0].message)
    assert "Ninja is required" in message
    assert "C++ compiler" in message and "ninja" in message and "DCN_CPU_KERNEL=0" in message
    # Once: later calls neither retry nor warn again, and the op still runs (ATen path).
    x, w, off = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.zeros(1, 18, 3, 3)
    out = deform_conv2d(x, off, w)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w))


def test_build_logs_one_info_line_only_when_compiling(fresh_kernel, monkeypatch, caplog):
    built = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kwargs: built.append(kwargs["name"]))
    monkeypatch.setattr(_cpu_kernel, "_is_built", lambda name, csrc_hash: False)
    with caplog.at_level(logging.INFO, logger=_cpu_kernel.__name__):
        _cpu_kernel.load()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1 and "building the CPU kernel" in lines[0]
    assert built == [f"dcn_cpu_kernels_{_cpu_kernel._isa().lower()}"]

    monkeypatch.setattr(_cpu_kernel, "_module", None)
    monkeypatch.setattr(_cpu_kernel, "_is_built", lambda name, csrc_hash: True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=_cpu_kernel.__name__):
        _cpu_kernel.load()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_is_built_tracks_the_sources():
    if _cpu_kernel.load() is None:
        pytest.skip(f"the CPU kernel did not build here: {_cpu_kernel._failed}")
    name = f"dcn_cpu_kernels_{_cpu_kernel._isa().lower()}"
    assert _cpu_kernel._is_built(name, _cpu_kernel._csrc_hash())
    assert not _cpu_kernel._is_built(name, "0" * 12)  # edited sources: a rebuild is coming
