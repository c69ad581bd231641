"""Property-based tests of deform_conv2d (hypothesis): random valid configurations.

Each example draws a configuration (batch 0..5, channels, conv groups, offset groups, kernel 1..5
each side, stride, padding, dilation, mask and bias on or off) and offsets of every kind (small,
integer-valued, far outside the image, NaN, +-inf), then checks:

* equality with torchvision's forward and gradients in float64 for finite offsets (sample points
  kept off the integer lines, where bilinear interpolation has one-sided derivatives);
* inputs unmodified by forward and backward;
* a NaN offset makes exactly the outputs that sample it NaN, nothing else;
* an infinite offset is a sample outside the image (the same result as a far-away finite one).

torchvision is never handed a NaN offset: its CPU op can crash the process on one.

The number of examples comes from the hypothesis profile: ``ci`` (the default, a few seconds per
property) or ``thorough`` (``HYPOTHESIS_PROFILE=thorough pytest tests/ops/test_properties.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
import torchvision.ops

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed: pip install -e .[dev]")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dcn.ops import _cpu_kernel, deform_conv2d  # noqa: E402

settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass(frozen=True)
class Case:
    n: int
    c_in: int
    c_out: int
    h: int
    w: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    offset_groups: int
    mask: bool
    bias: bool
    seed: int

    @property
    def out_hw(self):
        return tuple(
            (size + 2 * p - (d * (k - 1) + 1)) // s + 1
            for size, k, s, p, d in zip(
                (self.h, self.w), self.kernel, self.stride, self.padding, self.dilation
            )
        )


@st.composite
def cases(draw, min_n=0):
    groups = draw(st.sampled_from([1, 2, 3]))
    offset_groups = draw(st.sampled_from([1, 2, 4]))
    c_in = groups * offset_groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    # Input at least as large as the dilated kernel minus the padding: a non-empty output.
    h = draw(st.integers(max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0]), 9))
    w = draw(st.integers(max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1]), 9))
    return Case(
        draw(st.integers(min_n, 5)),
        c_in,
        c_out,
        h,
        w,
        kernel,
        stride,
        padding,
        dilation,
        groups,
        offset_groups,
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.integers(0, 2**31 - 1)),
    )


def make_tensors(case: Case, offset_kind: str):
    """(input, offset, weight, bias, mask) in float64. offset_kind: 'fractional' (off the integer
    lines), 'integer' (exactly on them) or 'mixed' (fractional, some far outside the image)."""
    g = torch.Generator().manual_seed(case.seed)
    ho, wo = case.out_hw
    kh, kw = case.kernel
    K = kh * kw
    x = torch.randn(case.n, case.c_in, case.h, case.w, generator=g, dtype=torch.float64)
    weight = torch.randn(case.c_out, case.c_in // case.groups, kh, kw, generator=g, dtype=torch.float64)
    bias = torch.randn(case.c_out, generator=g, dtype=torch.float64) if case.bias else None
    mask = (
        torch.rand(case.n, case.offset_groups * K, ho, wo, generator=g, dtype=torch.float64)
        if case.mask
        else None
    )
    shape = (case.n, 2 * case.offset_groups * K, ho, wo)
    if offset_kind == "integer":
        offset = torch.randint(-3, 4, shape, generator=g).double()
    else:
        # Integer part + a fraction in [0.1, 0.9]: every sample coordinate (grid + offset) stays
        # at least 0.1 away from an integer, since the grid itself is integer.
        offset = (
            torch.randint(-3, 4, shape, generator=g).double()
            + 0.1
            + 0.8 * torch.rand(shape, generator=g, dtype=torch.float64)
        )
        if offset_kind == "mixed":
            far = torch.rand(shape, generator=g) < 0.15
            offset = torch.where(far, offset + 40.0 * torch.sign(torch.randn(shape, generator=g)), offset)
    return x, offset, weight, bias, mask


def run(case: Case, tensors, op):
    """(output, gradients of every tensor input) for a fixed random output gradient."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in tensors]
    x, offset, weight, bias, mask = leaves
    out = op(x, offset, weight, bias, case.stride, case.padding, case.dilation, mask)
    g = torch.Generator().manual_seed(case.seed + 1)
    grad_out = torch.randn(out.shape, generator=g, dtype=out.dtype)
    present = [t for t in leaves if t is not None]
    grads = (
        torch.autograd.grad(out, present, grad_out, allow_unused=True)
        if out.numel()
        else [torch.zeros_like(t) for t in present]
    )
    return out.detach(), [gr if gr is not None else torch.zeros_like(t) for gr, t in zip(grads, present)]


def dcn_op(*args):
    return deform_conv2d(*args, backend="torch")


@pytest.fixture(params=["fused", "aten"], scope="module")
def cpu_backward(request):
    """Properties hold for dcn's fused C++ backward and for the pure-ATen fallback."""
    if request.param == "fused":
        if _cpu_kernel.load() is None:
            pytest.fail(f"the fused CPU kernel did not build: {_cpu_kernel._failed}")
        yield request.param
        return
    original = _cpu_kernel.load
    _cpu_kernel.load = lambda: None
    try:
        yield request.param
    finally:
        _cpu_kernel.load = original


@given(case=cases(), offset_kind=st.sampled_from(["fractional", "mixed"]))
def test_matches_torchvision_in_float64(cpu_backward, case, offset_kind):
    tensors = make_tensors(case, offset_kind)
    out, grads = run(case, tensors, dcn_op)
    ref_out, ref_grads = run(case, tensors, torchvision.ops.deform_conv2d)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-9)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@given(case=cases())
def test_integer_offsets_forward_matches_torchvision(case):
    """On the integer lines the value is continuous (only derivatives are one-sided)."""
    x, offset, weight, bias, mask = make_tensors(case, "integer")
    out = deform_conv2d(x, offset, weight, bias, case.stride, case.padding, case.dilation, mask)
    ref = torchvision.ops.deform_conv2d(
        x, offset, weight, bias, case.stride, case.padding, case.dilation, mask
    )
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


@given(case=cases(), offset_kind=st.sampled_from(["mixed", "integer"]))
def test_inputs_unmodified(cpu_backward, case, offset_kind):
    tensors = make_tensors(case, offset_kind)
    before = [t.clone() if t is not None else None for t in tensors]
    run(case, tensors, dcn_op)
    for t, b in zip(tensors, before):
        if t is not None:
            assert torch.equal(t, b)


def _sampled_output_channels(case: Case, group: int) -> torch.Tensor:
    """Output channels that read input channels of offset group ``group`` (through conv groups)."""
    per_group = case.c_in // case.offset_groups
    channels = torch.arange(group * per_group, (group + 1) * per_group)
    conv_groups = (channels // (case.c_in // case.groups)).unique()
    out_per_group = case.c_out // case.groups
    return torch.cat([torch.arange(g * out_per_group, (g + 1) * out_per_group) for g in conv_groups.tolist()])


@given(case=cases(min_n=1), data=st.data())
def test_nan_offset_is_confined_to_the_outputs_that_sample_it(cpu_backward, case, data):
    x, offset, weight, bias, mask = make_tensors(case, "mixed")
    ho, wo = case.out_hw
    K = case.kernel[0] * case.kernel[1]
    b = data.draw(st.integers(0, case.n - 1))
    grp = data.draw(st.integers(0, case.offset_groups - 1))
    k = data.draw(st.integers(0, K - 1))
    i, j = data.draw(st.integers(0, ho - 1)), data.draw(st.integers(0, wo - 1))
    axis = data.draw(st.integers(0, 1))
    offset = offset.clone()
    offset[b, grp * 2 * K + 2 * k + axis, i, j] = float("nan")
    out, grads = run(case, (x, offset, weight, bias, mask), dcn_op)
    expected = torch.zeros_like(out, dtype=torch.bool)
    expected[b, _sampled_output_channels(case, grp), i, j] = True
    assert torch.equal(torch.isnan(out), expected)
    assert torch.isfinite(grads[0]).all(), "the input gradient must stay finite"


@given(case=cases(min_n=1), data=st.data(), sign=st.sampled_from([1.0, -1.0]))
def test_infinite_offset_is_outside_the_image(cpu_backward, case, data, sign):
    x, offset, weight, bias, mask = make_tensors(case, "fractional")
    index = tuple(data.draw(st.integers(0, s - 1)) for s in offset.shape)
    inf, far = offset.clone(), offset.clone()
    inf[index] = sign * float("inf")
    far[index] = sign * 1e6
    out, grads = run(case, (x, inf, weight, bias, mask), dcn_op)
    far_out, far_grads = run(case, (x, far, weight, bias, mask), dcn_op)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, far_out, rtol=0, atol=0)
    for a, f in zip(grads, far_grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, f, rtol=0, atol=0)
