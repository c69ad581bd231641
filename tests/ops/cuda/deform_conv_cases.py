"""Deformable-convolution test cases shared by the host-kernel and GPU tests of the CUDA path."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
import torch
import torchvision

from dcn.ops import _cupy_deform_conv as cupy_backend
from dcn.ops import _torch_deform_conv as torch_backend
from dcn.ops._backend import ConvInputs, ConvParams
from dcn.ops.deform_conv import _out_size


@dataclass(frozen=True)
class Config:
    """Shapes and options of one deformable convolution."""

    n: int = 2
    c_in: int = 4
    c_out: int = 6
    h: int = 7
    w: int = 6
    kh: int = 3
    kw: int = 3
    stride: tuple = (1, 1)
    padding: tuple = (1, 1)
    dilation: tuple = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    mask: bool = True
    bias: bool = True
    offset_scale: float = 2.0  # large enough that many samples fall (partly) outside the image

    @property
    def out_hw(self) -> tuple[int, int]:
        return (
            _out_size(self.h, self.kh, self.stride[0], self.padding[0], self.dilation[0]),
            _out_size(self.w, self.kw, self.stride[1], self.padding[1], self.dilation[1]),
        )


CONFIGS = {
    "basic": Config(),
    "no_mask_no_bias": Config(mask=False, bias=False),
    "groups": Config(c_in=6, c_out=4, groups=2),
    "offset_groups": Config(c_in=6, offset_groups=3),
    "groups_and_offset_groups": Config(c_in=8, c_out=4, groups=2, offset_groups=4),
    "stride_dilation_odd": Config(
        n=3, c_in=3, c_out=5, h=9, w=8, kh=3, kw=2, stride=(2, 1), padding=(2, 0), dilation=(2, 3), mask=False
    ),
    "1x1_kernel": Config(kh=1, kw=1, padding=(0, 0), c_in=5, c_out=3),
    "single_pixel_rows": Config(h=1, w=5, kh=1, kw=3, padding=(0, 1)),
    "far_outside": Config(offset_scale=8.0),
}


def _random_config(seed: int) -> Config:
    r = random.Random(seed)
    groups, offset_groups = r.choice([1, 2]), r.choice([1, 2, 3])
    kh, kw = r.randint(1, 3), r.randint(1, 3)
    stride, dilation = (r.randint(1, 2), r.randint(1, 2)), (r.randint(1, 2), r.randint(1, 2))
    padding = (r.randint(0, 2), r.randint(0, 2))
    h = r.randint(dilation[0] * (kh - 1) + 1, 9)
    w = r.randint(dilation[1] * (kw - 1) + 1, 9)
    c_in = groups * offset_groups * r.randint(1, 2)
    return Config(
        n=r.randint(1, 3),
        c_in=c_in,
        c_out=groups * r.randint(1, 3),
        h=h,
        w=w,
        kh=kh,
        kw=kw,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        offset_groups=offset_groups,
        mask=r.random() < 0.6,
        bias=r.random() < 0.5,
        offset_scale=r.choice([0.5, 2.0, 4.0]),
    )


CONFIGS.update({f"random{seed}": _random_config(seed) for seed in range(6)})


# --------------------------------------------------------------------------------------
# Launch geometries (the conftest's ``launch_mode`` fixture runs a test under each)
# --------------------------------------------------------------------------------------
_real_launch_config = cupy_backend.sample_launch_config


def _two_channels_per_thread(points, group_channels):
    cfg = _real_launch_config(points, group_channels)
    per_thread = min(2, group_channels)
    return replace(cfg, channels_per_thread=per_thread, chunks=-(-group_channels // per_thread))


# Module attributes of dcn.ops._cupy_deform_conv to override. With the tiny shapes of CONFIGS the
# defaults give one channel per thread (the problem is far below TARGET_THREADS); "one_chunk" keeps
# each group's channels in one thread (offset/mask grads stored, not atomically added);
# "two_channels" leaves a partial last chunk when a group has an odd channel count; "small_grid"
# caps the grid at 2 blocks (grid-stride loops); "batch_chunks" forces one image per batch chunk
# (column buffer reuse, partial launches).
LAUNCH_MODES = {
    "default": {},
    "one_chunk": {"TARGET_THREADS": 1},
    "two_channels": {"sample_launch_config": _two_channels_per_thread},
    "small_grid": {"MAX_BLOCKS": 2},
    "batch_chunks": {"COLUMN_BUDGET": 1},
}


def poison_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``torch.empty`` and ``Tensor.new_empty`` (the backend's uninitialised buffers) return
    NaN-filled floating-point tensors until ``monkeypatch`` is undone: an element that a kernel or
    GEMM fails to write then shows up as NaN instead of a plausible stale value."""
    real_empty, real_new_empty = torch.empty, torch.Tensor.new_empty

    def poisoned(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(real_empty(*a, **k)))
    monkeypatch.setattr(
        torch.Tensor, "new_empty", lambda self, *a, **k: poisoned(real_new_empty(self, *a, **k))
    )


def make_inputs(cfg: Config, dtype: torch.dtype, seed: int = 0, device="cpu"):
    """(input, offset, mask, weight, bias) for ``cfg``, generated in float64 on the CPU (the same
    values on every device), then cast and moved."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = cfg.out_hw
    K = cfg.kh * cfg.kw

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    x = rand(cfg.n, cfg.c_in, cfg.h, cfg.w)
    offset = rand(cfg.n, 2 * cfg.offset_groups * K, ho, wo, scale=cfg.offset_scale)
    mask = (
        torch.rand(cfg.n, cfg.offset_groups * K, ho, wo, generator=g, dtype=torch.float64).to(dtype)
        if cfg.mask
        else None
    )
    weight = rand(cfg.c_out, cfg.c_in // cfg.groups, cfg.kh, cfg.kw)
    bias = rand(cfg.c_out) if cfg.bias else None
    return tuple(t.to(device) if t is not None else None for t in (x, offset, mask, weight, bias))


def random_grad_out(cfg: Config, dtype: torch.dtype, seed: int = 1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(cfg.n, cfg.c_out, *cfg.out_hw, dtype=torch.float64, generator=g).to(device, dtype)


def conv_args(cfg: Config) -> ConvParams:
    return ConvParams(cfg.stride, cfg.padding, cfg.dilation, cfg.groups, cfg.offset_groups)


def run_kernels(kernels, cfg, tensors, grad_out, needs=(True,) * 5):
    """The CuPy backend's orchestration with the given kernel launcher: (out, grads)."""
    x, offset, mask, weight, bias = tensors
    out = cupy_backend.deform_conv2d_forward(
        ConvInputs(x, offset, mask, weight, bias), conv_args(cfg), launch=kernels
    )
    grads = cupy_backend.deform_conv2d_backward(
        grad_out, ConvInputs(x, offset, mask, weight, bias), conv_args(cfg), list(needs), launch=kernels
    )
    return out, grads


def run_reference(cfg, tensors, grad_out):
    """The PyTorch backend in float64."""
    t64 = [t.double() if t is not None else None for t in tensors]
    out = torch_backend.deform_conv2d_forward(ConvInputs(*t64), conv_args(cfg))
    grads = torch_backend.deform_conv2d_backward(
        grad_out.double(), ConvInputs(*t64), conv_args(cfg), [True] * 5
    )
    return out, grads


def run_torchvision(cfg, tensors, grad_out):
    """torchvision's CPU op in float64 (forward and autograd gradients)."""
    x, offset, mask, weight, bias = (t.double().requires_grad_() if t is not None else None for t in tensors)
    out = torchvision.ops.deform_conv2d(x, offset, weight, bias, cfg.stride, cfg.padding, cfg.dilation, mask)
    out.backward(grad_out.double())
    grads = tuple(t.grad if t is not None else None for t in (x, offset, mask, weight, bias))
    return out.detach(), grads


def half_weight_grad_case(dtype: torch.dtype, device="cpu"):
    """(cfg, tensors, grad_out, expected grad_weight) for float16 or bfloat16, run with one image
    per batch chunk (``COLUMN_BUDGET = 1``): each image's part of the weight gradient is not
    representable in ``dtype`` (float16: it overflows; bfloat16: it rounds away the unit that the
    other image's part does not cancel), while their sum is, exactly.

    1x1 kernel, zero offsets, no mask, weight 1: the columns are the input, and
    grad_weight = sum over images b and positions l of grad_out[b, 0, 0, l] * input[b, 0, 0, l].
    """
    cfg = Config(n=2, c_in=1, c_out=1, h=1, w=2, kh=1, kw=1, padding=(0, 0), mask=False, bias=False)
    if dtype == torch.float16:  # 115200 (> 65504, inf in float16) - 59520 = 55680
        x, go = [[240.0, 240.0], [240.0, 8.0]], [[240.0, 240.0], [-240.0, -240.0]]
    elif dtype == torch.bfloat16:  # 257 (rounds to 256 in bfloat16) - 256 = 1
        x, go = [[256.0, 1.0], [256.0, 0.0]], [[1.0, 1.0], [-1.0, 0.0]]
    else:
        raise ValueError(f"a 16-bit dtype is needed, got {dtype}")
    x = torch.tensor(x, dtype=torch.float64).view(2, 1, 1, 2)
    grad_out = torch.tensor(go, dtype=torch.float64).view(2, 1, 1, 2)
    expected = (x * grad_out).sum().view(1, 1, 1, 1)
    offset = torch.zeros(2, 2, 1, 2, dtype=torch.float64)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    tensors = tuple(t.to(device, dtype) for t in (x, offset)) + (None, weight.to(device, dtype), None)
    return cfg, tensors, grad_out.to(device, dtype), expected.to(device, dtype)


GRAD_NAMES = ("input", "offset", "mask", "weight", "bias")
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=2e-5)}


def assert_close(actual, expected, name, **tol):
    """``expected`` None means no gradient may be returned; values are compared in float64."""
    if expected is None:
        assert actual is None, f"{name}: expected no gradient"
        return
    assert actual is not None, f"{name}: gradient missing"
    assert actual.shape == expected.shape, name
    torch.testing.assert_close(actual.double(), expected.double(), msg=lambda m: f"{name}: {m}", **tol)


# --------------------------------------------------------------------------------------
# Non-finite offsets: NaN propagates to the outputs that sample it, +-Inf is outside the image
# --------------------------------------------------------------------------------------
NONFINITE_CFG = Config(n=2, c_in=4, c_out=3, h=6, w=7, mask=True, bias=True, offset_scale=1.0)
NONFINITE_POINT = (0, 4, 2, 3)  # image 0, kernel point 4 (the centre), output position (2, 3)


def check_nonfinite_offsets(run, dtype, device="cpu"):
    """``run(cfg, tensors, grad_out) -> (out, grads)``: a NaN offset gives NaN exactly at the
    outputs (all channels) of the position that samples it, and NaN offset/mask gradients at that
    sample; an infinite offset is a sample outside the image: the result equals that of a
    far-away finite offset, and everything stays finite."""
    cfg = NONFINITE_CFG
    tensors = make_inputs(cfg, dtype, seed=11, device=device)
    grad_out = random_grad_out(cfg, dtype, seed=12, device=device)
    x, offset, mask, weight, bias = tensors
    b, k, i, j = NONFINITE_POINT
    base_out, base_grads = run(cfg, tensors, grad_out)

    nan_offset = offset.clone()
    nan_offset[b, 2 * k, i, j] = float("nan")  # dy only: one NaN coordinate is enough
    out, grads = run(cfg, (x, nan_offset, mask, weight, bias), grad_out)
    hit = torch.zeros_like(out, dtype=torch.bool)
    hit[b, :, i, j] = True
    assert torch.isnan(out[hit]).all(), "a NaN offset must make the outputs that sample it NaN"
    assert torch.isfinite(out[~hit]).all(), "a NaN offset leaked into outputs that do not sample it"
    torch.testing.assert_close(out[~hit], base_out[~hit], rtol=1e-6, atol=1e-6)
    g_in, g_off, g_mask, g_w, g_b = grads
    assert torch.isfinite(g_in).all(), "no input gradient flows through a NaN sample"
    assert torch.isnan(g_off[b, 2 * k : 2 * k + 2, i, j]).all() and torch.isnan(g_mask[b, k, i, j])
    off_hit = torch.zeros_like(g_off, dtype=torch.bool)
    off_hit[b, 2 * k : 2 * k + 2, i, j] = True
    assert torch.isfinite(g_off[~off_hit]).all()
    torch.testing.assert_close(g_off[~off_hit], base_grads[1][~off_hit], rtol=1e-5, atol=1e-6)
    assert torch.isnan(g_w[:, :, k // cfg.kw, k % cfg.kw]).all()  # the tap that read the NaN sample
    assert torch.isfinite(g_b).all()

    for inf in (float("inf"), float("-inf")):
        inf_offset, far_offset = offset.clone(), offset.clone()
        inf_offset[b, 2 * k + 1, i, j] = inf  # dx
        far_offset[b, 2 * k + 1, i, j] = 1e4 if inf > 0 else -1e4
        out, grads = run(cfg, (x, inf_offset, mask, weight, bias), grad_out)
        far_out, far_grads = run(cfg, (x, far_offset, mask, weight, bias), grad_out)
        assert torch.isfinite(out).all(), f"offset {inf} must be a sample outside the image"
        # Equal up to the summation order of atomically scattered gradients.
        tol = TOL[dtype]
        torch.testing.assert_close(out, far_out, **tol)
        for g, f, name in zip(grads, far_grads, GRAD_NAMES):
            assert torch.isfinite(g).all(), f"grad {name} not finite with offset {inf}"
            torch.testing.assert_close(g, f, **tol, msg=lambda m: f"grad {name}: {m}")
