"""Fixtures and hooks of the CUDA-kernel checks.

* ``deform_conv_kernels``: the host-compiled kernels (see host_kernels.py), built into
  ``host_kernel_cache``;
* ``launch_mode``: runs a test under each launch geometry of ``deform_conv_cases.LAUNCH_MODES``;
* ``DCN_REQUIRE_CUPY=1`` (environment): a ``gpu``-marked test that is skipped while the CuPy
  kernels cannot run here fails instead, with the reason (an error when the skip came from a
  ``skipif`` mark, which acts in the setup phase), so that a GPU machine whose CuPy is missing or
  broken cannot pass the GPU tests by skipping them all.

Nothing here imports Hydra: the GPU tests run with ``--confcutdir=tests/ops/cuda`` on machines that
have only torch, torchvision, CuPy and pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

import host_kernels
import pytest
from deform_conv_cases import LAUNCH_MODES

from dcn.ops import _cupy_deform_conv, _cupy_deform_roi_pool

REQUIRE_CUPY = "DCN_REQUIRE_CUPY"


@pytest.fixture(scope="session")
def host_kernel_cache(pytestconfig, tmp_path_factory) -> Path:
    """Where host_kernels.build keeps its libraries."""
    if host_kernels.compiler() is None:
        pytest.fail("no host C++ compiler (g++/clang++ or $CXX) for the CUDA kernel checks")
    # The pytest cache survives between runs, so an unchanged source is not recompiled; fall back
    # to a per-session temp dir when the cache provider is disabled.
    cache = getattr(pytestconfig, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("dcn_cuda_shim"))
    return tmp_path_factory.mktemp("dcn_cuda_shim")


@pytest.fixture(scope="session")
def deform_conv_kernels(host_kernel_cache) -> host_kernels.HostKernels:
    """The deformable-convolution kernels compiled for the CPU (a ``Launch`` for the CPU)."""
    source = _cupy_deform_conv.SOURCE
    return host_kernels.HostKernels(source, host_kernels.build(source, host_kernel_cache))


@pytest.fixture(params=list(LAUNCH_MODES))
def launch_mode(request, monkeypatch) -> str:
    """The name of a launch geometry, applied to dcn.ops._cupy_deform_conv for the test."""
    for name, value in LAUNCH_MODES[request.param].items():
        monkeypatch.setattr(_cupy_deform_conv, name, value)
    return request.param


@pytest.hookimpl(hookwrapper=True)  # old-style wrapper: the GPU machines' pytest may be old
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if report.skipped and os.environ.get(REQUIRE_CUPY) == "1" and item.get_closest_marker("gpu"):
        # Either op's kernels: a RoI-pool module that fails to build must not pass by skipping.
        reason = _cupy_deform_conv.unavailable_reason() or _cupy_deform_roi_pool.unavailable_reason()
        if reason is not None:  # skips for other reasons (e.g. not enough free memory) stand
            report.outcome = "failed"
            report.longrepr = f"{REQUIRE_CUPY}=1 but the CuPy kernels cannot run here: {reason}"
