"""deform_roi_pool's backward is differentiable (create_graph=True): gradgradcheck in float64 and a
gradient-penalty step, as for deform_conv2d. The composite op behind it also serves as the
deterministic backward off the CPU, where autocast gives it 16-bit features with float32 boxes."""

import pytest
import torch
from cuda.roi_pool_cases import large_box_case, make_case

from dcn.ops import DeformRoIPoolPack, _composite_deform_roi_pool, _torch_deform_roi_pool, deform_roi_pool
from dcn.ops._backend import PoolInputs, PoolParams


@pytest.mark.parametrize("sampling_ratio,aligned", [(2, True), (0, True), (0, False)])
def test_composite_equals_the_op(sampling_ratio, aligned):
    x, rois, off, _ = make_case(seed=5)
    composed = _composite_deform_roi_pool.deform_roi_pool(
        PoolInputs(x, rois, off), PoolParams((3, 2), 0.5, sampling_ratio, 0.2, aligned)
    )
    fused = deform_roi_pool(x, rois, off, (3, 2), 0.5, sampling_ratio, 0.2, aligned=aligned, backend="torch")
    torch.testing.assert_close(composed, fused, rtol=1e-12, atol=1e-12)


def test_composite_computes_16bit_features_in_float32():
    """bfloat16 features with float32 boxes at 512-1024 px and float32 offsets (what autocast sends
    the CUDA path): the float32 computation on the features, rounded once to bfloat16; each gradient
    comes back in its tensor's dtype."""
    x, rois, off, grad = large_box_case()
    x, off = x.bfloat16().requires_grad_(), off.requires_grad_()
    args = ((3, 3), 1 / 8, 2, 0.1, True)
    out = _composite_deform_roi_pool.deform_roi_pool(PoolInputs(x, rois, off), PoolParams(*args))
    g_in, g_off = torch.autograd.grad(out, (x, off), grad.bfloat16())
    features = x.detach().float()
    ref = _torch_deform_roi_pool.deform_roi_pool_forward(
        PoolInputs(features, rois, off.detach()), PoolParams(*args)
    )
    r_in, r_off = _torch_deform_roi_pool.deform_roi_pool_backward(
        grad.bfloat16().float(), PoolInputs(features, rois, off.detach()), PoolParams(*args)
    )
    assert out.dtype == g_in.dtype == torch.bfloat16 and g_off.dtype == torch.float32
    bf16 = dict(rtol=2**-8, atol=1e-5)  # one rounding of a float32 result
    torch.testing.assert_close(out.float(), ref, **bf16)
    torch.testing.assert_close(g_in.float(), r_in, **bf16)
    torch.testing.assert_close(g_off, r_off, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_gradgradcheck(sampling_ratio):
    x, rois, off, _ = make_case(n=1, c=2, hw=(6, 7), k=3, output_size=(2, 2), seed=8)
    x, off = x.requires_grad_(), (off * 0.3).requires_grad_()
    rois = rois[2:]  # proper boxes (the case's first two are far outside / degenerate)
    off = off[2:].detach().requires_grad_()

    def fn(x_, off_):
        return deform_roi_pool(x_, rois, off_, (2, 2), 0.5, sampling_ratio, 0.1)

    assert torch.autograd.gradgradcheck(fn, (x, off), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_create_graph_gradients_equal_the_fused_ones():
    x, rois, off, grad = make_case(seed=3)
    x, off = x.requires_grad_(), off.requires_grad_()
    out = deform_roi_pool(x, rois, off, (3, 2), 0.5, 0, 0.2)
    fused = torch.autograd.grad(out, (x, off), grad, retain_graph=True)
    composed = torch.autograd.grad(out, (x, off), grad, create_graph=True)
    for f, c in zip(fused, composed):
        assert c.requires_grad
        torch.testing.assert_close(c.detach(), f, rtol=1e-10, atol=1e-10)


def test_gradient_penalty_through_the_pack_layer():
    torch.manual_seed(0)
    pool = DeformRoIPoolPack(3, 2, 0.5, 0, hidden_channels=8, modulated=True).double()
    with torch.no_grad():
        pool.offset_head.fc[-1].weight.normal_(0, 0.1)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 12.0, 13.0], [0, 4.0, 0.0, 15.0, 9.0]], dtype=torch.float64)
    (gx,) = torch.autograd.grad(pool(x, rois).square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    assert pool.offset_head.fc[-1].weight.grad.abs().sum() > 0
