"""Fixtures for the CUDA-kernel checks: the host-compiled kernels (see host_kernels.py)."""

from __future__ import annotations

from pathlib import Path

import host_kernels
import pytest

from dcn.ops import _cupy_deform_conv


def _cache_dir(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The pytest cache survives between runs, so an unchanged source is not recompiled; fall back
    # to a per-session temp dir when the cache provider is disabled.
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("dcn_cuda_shim"))
    return tmp_path_factory.mktemp("dcn_cuda_shim")


@pytest.fixture(scope="session")
def deform_conv_kernels(pytestconfig, tmp_path_factory) -> host_kernels.HostKernels:
    """The deformable-convolution kernels compiled for the CPU (a ``Launch`` for the CPU)."""
    if host_kernels.compiler() is None:
        pytest.fail("no host C++ compiler (g++/clang++ or $CXX) for the CUDA kernel checks")
    source = _cupy_deform_conv.SOURCE
    lib = host_kernels.build(source, _cache_dir(pytestconfig, tmp_path_factory))
    return host_kernels.HostKernels(source, lib)
