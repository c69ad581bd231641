"""Backend selection (dcn.ops._dispatch), shared by both ops."""

from __future__ import annotations

import pytest
import torch

from dcn.ops import _dispatch


def test_resolve_backend_rules(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _dispatch.resolve_backend("auto", cpu) == "torch"
    assert _dispatch.resolve_backend("torch", cuda) == "torch"
    monkeypatch.setattr(_dispatch, "cupy_unavailable_reason", lambda op="deform_conv2d": None)
    monkeypatch.setattr(
        _dispatch, "self_check_failure", lambda op, index: None
    )  # tests/ops/cuda/test_self_check.py
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert _dispatch.resolve_backend("auto", cuda, "deform_roi_pool") == "cupy"
    assert _dispatch.resolve_backend("auto", cpu, "deform_roi_pool") == "torch"
    with pytest.raises(ValueError, match="backend='cupy' needs CUDA tensors, got tensors on cpu"):
        _dispatch.resolve_backend("cupy", cpu)
    monkeypatch.setattr(
        _dispatch, "cupy_unavailable_reason", lambda op="deform_conv2d": "CuPy is not installed"
    )
    assert _dispatch.resolve_backend("auto", cuda) == "torch"
    with pytest.raises(
        RuntimeError, match=r"not available for deform_roi_pool: CuPy is not installed\. .*cuda13"
    ):
        _dispatch.resolve_backend("cupy", cuda, "deform_roi_pool")
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        _dispatch.resolve_backend("triton", cpu)


def test_implementation_modules():
    from dcn.ops import _cupy_deform_roi_pool, _torch_deform_conv

    assert _dispatch.implementation("deform_conv2d", "torch") is _torch_deform_conv
    assert _dispatch.implementation("deform_roi_pool", "cupy") is _cupy_deform_roi_pool


def test_backend_choice_compiles_in_one_graph_for_cuda_devices():
    """Resolving the backend of a CUDA tensor must not break a fullgraph torch.compile (the CuPy
    availability check imports modules, which Dynamo cannot trace): it is a compile-time constant."""
    device = torch.device("cuda")

    def fn(x):
        return x + (1.0 if _dispatch.resolve_backend("auto", device) == "cupy" else 2.0)

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    expected = 1.0 if _dispatch.cupy_unavailable_reason() is None else 2.0
    assert torch.equal(compiled(torch.zeros(3)), torch.full((3,), expected))


@pytest.mark.parametrize(
    "device_type,deterministic,create_graph,route",
    [
        ("cuda", True, False, "composite"),  # the kernels' float atomics are not reproducible
        ("cuda", False, False, "fused"),
        ("cuda", False, True, "composite"),  # double backward
        ("cpu", True, False, "fused"),  # the CPU kernels are deterministic already
        ("cpu", False, False, "fused"),
        ("cpu", True, True, "composite"),
        ("xpu", True, False, "composite"),
    ],
)
def test_backward_route(device_type, deterministic, create_graph, route):
    """Both ops' backward follows this rule (tests/ops/test_deterministic_*.py check that they ask it)."""
    assert _dispatch.backward_route(device_type, deterministic, create_graph) == route
