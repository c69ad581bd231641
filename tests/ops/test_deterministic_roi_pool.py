"""Deterministic mode of deform_roi_pool: which backward runs, and bitwise-reproducible gradients.

Under ``torch.use_deterministic_algorithms(True)`` the CPU keeps its fused backward (deterministic:
a fixed summation order); every other device routes the backward through the composite op, whose
``index_select`` backward PyTorch makes deterministic on CUDA (the CUDA kernels scatter with float
atomicAdd). The CUDA choice is tested through the pure routing function; CPU runs prove bitwise
reproducibility with several threads and that the composite route gives the fused gradients.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from dcn.ops import _composite_deform_roi_pool, _dispatch, deform_roi_pool
from dcn.ops._backend import PoolInputs, PoolParams

# The module, not the function of the same name that dcn.ops exports.
roi_pool_module = importlib.import_module("dcn.ops.deform_roi_pool")


def _crowded_case(n=2, c=64, size=12, k=40, out=3, seed=0):
    """Many overlapping boxes and offsets over a small map: each pixel's input gradient sums many
    terms, where the order of floating-point additions shows. c=64 gives the CPU kernel several
    channel blocks per thread count (whose partial offset gradients are summed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=g)
    x1, y1 = (torch.rand(k, generator=g) * size for _ in range(2))
    x2, y2 = (start + 2 + torch.rand(k, generator=g) * size for start in (x1, y1))
    rois = torch.stack([torch.randint(0, n, (k,), generator=g).float(), x1, y1, x2, y2], 1)
    offset = torch.randn(k, 2, out, out, generator=g) * 0.3
    grad_out = torch.randn(k, c, out, out, generator=g)
    return x, rois, offset, grad_out


def _pool_and_grads(x, rois, offset, grad_out, **kwargs):
    """[output, grad_input, grad_offset] of the public op (spatial_scale 1, adaptive sampling)."""
    x, offset = x.clone().requires_grad_(), offset.clone().requires_grad_()
    out = deform_roi_pool(x, rois, offset, offset.shape[-1], 1.0, 0, **kwargs)
    out.backward(grad_out)
    return [out.detach(), x.grad, offset.grad]


NAMES = ["output", "input", "offset"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_backward_is_bitwise_reproducible(dtype, cpu_path, deterministic, two_threads):
    x, rois, offset, grad_out = (t.to(dtype) for t in _crowded_case())
    first = _pool_and_grads(x, rois, offset, grad_out)
    second = _pool_and_grads(x, rois, offset, grad_out)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), f"{name} differs between two identical runs ({cpu_path} path)"


def test_backward_consults_the_route_with_the_input_device(monkeypatch, deterministic):
    """The backward asks the router with the input's device and the global mode; forcing the
    composite route (what CUDA gets in deterministic mode) runs it instead of the fused backward and
    gives the fused route's gradients."""
    case = _crowded_case(c=8, seed=1)
    fused = _pool_and_grads(*case)
    calls = []

    def forced(device_type, deterministic_mode, create_graph):
        calls.append((device_type, deterministic_mode, create_graph))
        return "composite"

    def fused_backward_op(*args):
        raise AssertionError("the fused backward ran on the composite route")

    monkeypatch.setattr(roi_pool_module, "backward_route", forced)
    monkeypatch.setattr(roi_pool_module, "_deform_roi_pool_backward_op", fused_backward_op)
    composite = _pool_and_grads(*case)
    assert calls == [("cpu", True, False)]
    for name, a, b in zip(NAMES, fused, composite):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_composite_route_is_bitwise_reproducible_and_leaves_inputs_alone(
    monkeypatch, deterministic, two_threads
):
    monkeypatch.setattr(roi_pool_module, "backward_route", lambda *args: "composite")
    case = _crowded_case(c=8, seed=2)
    before = [t.clone() for t in case]
    first, second = _pool_and_grads(*case), _pool_and_grads(*case)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), f"{name} differs between two identical runs (composite route)"
    for t, b in zip(case, before):
        assert torch.equal(t, b)


@pytest.mark.parametrize("wanted", ["input", "offset"])
def test_composite_route_handles_partial_gradients(monkeypatch, deterministic, wanted):
    """Only one tensor wants a gradient (frozen features, or fixed offsets): the composite route must
    not ask autograd for the other."""
    x, rois, offset, grad_out = _crowded_case(c=8, seed=3)

    def grad(route):
        monkeypatch.setattr(roi_pool_module, "backward_route", lambda *args: route)
        leaf = (x if wanted == "input" else offset).clone().requires_grad_()
        args = (leaf, offset) if wanted == "input" else (x, leaf)
        deform_roi_pool(args[0], rois, args[1], 3, 1.0, 0).backward(grad_out)
        return leaf.grad

    torch.testing.assert_close(grad("composite"), grad("fused"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("create_graph", [False, True])
def test_composite_backward_keeps_a_graph_only_for_create_graph(create_graph):
    """Without create_graph the composite gradients carry no graph (none is kept alive), and the
    user's tensors are not walked: the helper differentiates fresh leaves."""
    x, rois, offset, grad_out = _crowded_case(c=8, seed=4)
    x, offset = x.clone().requires_grad_(), offset.clone().requires_grad_()
    pool = ([3, 3], 1.0, 0, 0.1, True)
    g_in, g_rois, g_off = _dispatch.composite_gradients(
        lambda *tensors: _composite_deform_roi_pool.deform_roi_pool(PoolInputs(*tensors), PoolParams(*pool)),
        (x, rois, offset),
        (True, False, True),
        grad_out,
        create_graph,
    )
    assert g_rois is None
    assert g_in.requires_grad == create_graph and g_off.requires_grad == create_graph
    assert x.grad is None and offset.grad is None
