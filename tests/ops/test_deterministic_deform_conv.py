"""Deterministic mode of deform_conv2d: which backward runs, and bitwise-reproducible gradients.

Under ``torch.use_deterministic_algorithms(True)`` the CPU keeps its fused kernels (deterministic:
every thread owns what it writes); every other device routes the backward through the composite
op, whose ``gather`` backward PyTorch makes deterministic. The CUDA choice is tested through the
pure routing function; the CPU runs prove bitwise reproducibility with several threads.
"""

from __future__ import annotations

import pytest
import torch

from dcn.ops import deform_conv as deform_conv_module
from dcn.ops import deform_conv2d


def _crowded_case(n=3, c_in=8, c_out=6, size=9, offset_groups=2, groups=2, seed=0):
    """Offsets that pull many samples onto the same few pixels: the scatter of the input gradient
    then adds many terms per pixel, where the order of floating-point additions shows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, size, size, generator=g)
    K = 9
    offset = 2.5 * torch.randn(n, 2 * offset_groups * K, size, size, generator=g)
    offset[:, 0::2] -= torch.arange(size).view(1, 1, -1, 1) * 0.6  # rows drift towards the top
    mask = torch.rand(n, offset_groups * K, size, size, generator=g)
    weight = torch.randn(c_out, c_in // groups, 3, 3, generator=g)
    bias = torch.randn(c_out, generator=g)
    grad_out = torch.randn(n, c_out, size, size, generator=g)
    return (x, offset, mask, weight, bias), grad_out


def _gradients(tensors, grad_out):
    leaves = [t.clone().requires_grad_() for t in tensors]
    x, offset, mask, weight, bias = leaves
    out = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, backend="torch")
    out.backward(grad_out)
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_backward_is_bitwise_reproducible(dtype, cpu_path, deterministic, two_threads):
    tensors, grad_out = _crowded_case()
    tensors, grad_out = [t.to(dtype) for t in tensors], grad_out.to(dtype)
    first, second = _gradients(tensors, grad_out), _gradients(tensors, grad_out)
    names = ["output", "input", "offset", "mask", "weight", "bias"]
    for name, a, b in zip(names, first, second):
        assert torch.equal(a, b), f"{name} differs between two identical runs ({cpu_path} path)"


def test_backward_consults_the_route_with_the_input_device(monkeypatch, deterministic):
    """The backward asks the router with the input's device and the global mode; forcing the
    composite route (what CUDA gets in deterministic mode) gives the fused route's gradients."""
    tensors, grad_out = _crowded_case(n=2)
    fused = _gradients(tensors, grad_out)
    calls = []

    def forced(device_type, deterministic_mode, create_graph):
        calls.append((device_type, deterministic_mode, create_graph))
        return "composite"

    monkeypatch.setattr(deform_conv_module, "backward_route", forced)
    composite = _gradients(tensors, grad_out)
    assert calls == [("cpu", True, False)]
    names = ["output", "input", "offset", "mask", "weight", "bias"]
    for name, a, b in zip(names, fused, composite):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_composite_route_is_bitwise_reproducible_and_leaves_inputs_alone(monkeypatch, deterministic):
    monkeypatch.setattr(deform_conv_module, "backward_route", lambda *args: "composite")
    tensors, grad_out = _crowded_case(n=2, seed=1)
    before = [t.clone() for t in tensors]
    first, second = _gradients(tensors, grad_out), _gradients(tensors, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)


def test_composite_route_handles_partial_gradients(monkeypatch, deterministic):
    """Only the weight wants a gradient (frozen features, fixed offsets): the composite route must
    not ask autograd for the others."""
    monkeypatch.setattr(deform_conv_module, "backward_route", lambda *args: "composite")
    (x, offset, mask, weight, bias), grad_out = _crowded_case(n=2, seed=2)
    w = weight.clone().requires_grad_()
    deform_conv2d(x, offset, w, bias, padding=1, mask=mask).backward(grad_out)
    w_ref = weight.clone().requires_grad_()
    monkeypatch.setattr(deform_conv_module, "backward_route", lambda *args: "fused")
    deform_conv2d(x, offset, w_ref, bias, padding=1, mask=mask).backward(grad_out)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-4)
