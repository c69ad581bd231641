"""Deformable convolution (Dai et al. 2017; DCN v2 modulation as an option).

Public API, with torchvision's signature order, tensor layouts and semantics:

* :func:`deform_conv2d` — the functional op, drop-in for ``torchvision.ops.deform_conv2d``;
* :class:`DeformConv2d` — the module with caller-given offsets, drop-in for
  ``torchvision.ops.DeformConv2d``;
* :class:`DeformConv2dPack` (and :class:`ModulatedDeformConv2dPack`) — the module that also owns
  its offset (and mask) predictor, mmcv's layers of the same names.

Both dispatch to a backend: ``"torch"`` (any device, :mod:`dcn.ops._torch_deform_conv`) or
``"cupy"`` (CUDA kernels, :mod:`dcn.ops._cupy_deform_conv`); ``"auto"`` picks CuPy for CUDA
tensors when it is importable. The op is registered with ``torch.library`` as
``dcn::deform_conv2d`` (fake implementation + autograd), so ``torch.compile`` and
``torch.library.opcheck`` work.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torch.utils.flop_counter import register_flop_formula

from dcn.ops import _composite_deform_conv
from dcn.ops._backend import ConvInputs, ConvParams
from dcn.ops._dispatch import (
    BACKENDS,
    backward_route,
    composite_gradients,
    cupy_unavailable_reason,
    implementation,
    resolve_backend,
)
from dcn.ops._modulated import ModulatedByDefault

__all__ = [
    "deform_conv2d",
    "DeformConv2d",
    "DeformConv2dPack",
    "ModulatedDeformConv2dPack",
    "BACKENDS",
    "cupy_unavailable_reason",
]

IntPair = Union[int, Tuple[int, int], Sequence[int]]


def _impl(backend: str) -> ModuleType:
    return implementation("deform_conv2d", backend)


# --------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------
def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


# The ops' schemas: the tensors as in torchvision's kernel, then the geometry and the backend.
_CONV_ARGS = (
    "Tensor input, Tensor offset, Tensor? mask, Tensor weight, Tensor? bias, "
    "int[] stride, int[] padding, int[] dilation, int groups, int offset_groups, str backend"
)


@torch.library.custom_op("dcn::deform_conv2d", mutates_args=(), schema=f"({_CONV_ARGS}) -> Tensor")
def _deform_conv2d_op(input, offset, mask, weight, bias, *conf) -> Tensor:
    *conv, backend = conf
    return _impl(backend).deform_conv2d_forward(
        ConvInputs(input, offset, mask, weight, bias), ConvParams(*conv)
    )


@_deform_conv2d_op.register_fake
def _(input, offset, mask, weight, bias, *conf):
    return input.new_empty((input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))


@torch.library.custom_op(
    "dcn::deform_conv2d_backward",
    mutates_args=(),
    schema=f"(Tensor grad_out, {_CONV_ARGS}, bool[] needs_input_grad) -> Tensor[]",
)
def _deform_conv2d_backward_op(grad_out, input, offset, mask, weight, bias, *conf_and_needs) -> List[Tensor]:
    """Returns [grad_input, grad_offset, grad_mask, grad_weight, grad_bias]; an empty tensor
    stands for a gradient that was not requested (custom ops cannot return None)."""
    *conv, backend, needs_input_grad = conf_and_needs
    x = ConvInputs(input, offset, mask, weight, bias)
    grads = _impl(backend).deform_conv2d_backward(
        grad_out.contiguous(), x, ConvParams(*conv), needs_input_grad
    )
    # Contiguous outputs: the fake implementation promises contiguous strides to the compiler.
    return [g.contiguous() if g is not None else input.new_empty(0) for g in grads]


@_deform_conv2d_backward_op.register_fake
def _(grad_out, input, offset, mask, weight, bias, *conf_and_needs):
    needs_input_grad = conf_and_needs[-1]
    like = [input, offset, mask, weight, bias]
    return [
        t.new_empty(t.shape) if (need and t is not None) else input.new_empty(0)
        for t, need in zip(like, needs_input_grad)
    ]


def _setup_context(ctx, inputs, output):
    input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups, backend = inputs
    ctx.save_for_backward(input, offset, mask, weight, bias)
    ctx.conf = (stride, padding, dilation, groups, offset_groups, backend)


def _backward(ctx, grad_out):
    input, offset, mask, weight, bias = ctx.saved_tensors
    needs = [
        ctx.needs_input_grad[0],
        ctx.needs_input_grad[1],
        mask is not None and ctx.needs_input_grad[2],
        ctx.needs_input_grad[3],
        bias is not None and ctx.needs_input_grad[4],
    ]
    # Grad mode is on in a backward only under create_graph=True (backward of the backward).
    create_graph = torch.is_grad_enabled()
    route = backward_route(input.device.type, torch.are_deterministic_algorithms_enabled(), create_graph)
    if route == "composite":
        conv = ctx.conf[:-1]
        g_in, g_off, g_mask, g_w, g_b = composite_gradients(
            lambda *tensors: _composite_deform_conv.deform_conv2d(ConvInputs(*tensors), ConvParams(*conv)),
            (input, offset, mask, weight, bias),
            needs,
            grad_out,
            create_graph,
        )
        return g_in, g_off, g_mask, g_w, g_b, None, None, None, None, None, None
    grads = _deform_conv2d_backward_op(grad_out, input, offset, mask, weight, bias, *ctx.conf, needs)
    g_in, g_off, g_mask, g_w, g_b = (g if need else None for g, need in zip(grads, needs))
    return g_in, g_off, g_mask, g_w, g_b, None, None, None, None, None, None


_deform_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# FLOP counting (torch.utils.flop_counter, which Lightning's model summary uses)
# --------------------------------------------------------------------------------------
def _deform_conv2d_flops(
    input_shape, offset_shape, mask_shape, weight_shape, *args, out_shape=None, **kwargs
) -> int:
    """Forward FLOPs: the GEMM of a convolution of the same shape (2 per multiply-add) plus the
    bilinear sampling (4 corner weights, 4 multiply-adds and the mask: about 12 per sample and channel)."""
    n, c_in = input_shape[0], input_shape[1]
    c_out, c_in_g, kh, kw = weight_shape
    samples = n * c_in * kh * kw * offset_shape[-2] * offset_shape[-1]
    return 2 * n * c_out * offset_shape[-2] * offset_shape[-1] * c_in_g * kh * kw + 12 * samples


def _deform_conv2d_backward_flops(
    grad_shape, input_shape, offset_shape, mask_shape, weight_shape, *args, out_shape=None, **kwargs
) -> int:
    """Backward FLOPs: two GEMMs (column and weight gradients), the recomputed sampling and its
    backward (scatter and position derivatives, about twice the forward sampling)."""
    return 2 * _deform_conv2d_flops(input_shape, offset_shape, mask_shape, weight_shape) + 24 * (
        input_shape[0]
        * input_shape[1]
        * weight_shape[2]
        * weight_shape[3]
        * offset_shape[-2]
        * offset_shape[-1]
    )


register_flop_formula(torch.ops.dcn.deform_conv2d)(_deform_conv2d_flops)
register_flop_formula(torch.ops.dcn.deform_conv2d_backward)(_deform_conv2d_backward_flops)


# --------------------------------------------------------------------------------------
# Public functional op
# --------------------------------------------------------------------------------------
def _check_args(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    mask: Optional[Tensor],
    stride,
    padding,
    dilation,
) -> Tuple[int, int]:
    """Validate shapes, dtypes and devices; return (groups, offset_groups)."""
    for name, t in (("input", input), ("offset", offset), ("weight", weight), ("mask", mask)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"bias must be a Tensor or None, got {type(bias).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C_in, H, W), got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in/groups, kh, kw), got shape {tuple(weight.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    # Under autocast the tensors may differ in floating dtype (bfloat16 features, float32 weights): the
    # op casts them to one compute dtype, as torchvision's autocast kernel does.
    autocast = torch.is_autocast_enabled(input.device.type)
    for name, t in (("offset", offset), ("weight", weight), ("bias", bias), ("mask", mask)):
        if t is None:
            continue
        if autocast and not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if not autocast and t.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but input has {input.dtype}; they must match")
        if t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}; they must match")
    for name, v in (("stride", stride), ("dilation", dilation)):
        if min(v) < 1:
            raise ValueError(f"{name} must be positive, got {tuple(v)}")
    if min(padding) < 0:
        raise ValueError(f"padding must be non-negative, got {tuple(padding)}")

    n, c_in, H, W = input.shape
    c_out, c_in_g, kh, kw = weight.shape
    if c_in_g == 0 or c_in % c_in_g != 0:
        raise ValueError(
            f"input has {c_in} channels, which is not a multiple of weight.shape[1]={c_in_g} "
            f"(C_in/groups); weight shape {tuple(weight.shape)}"
        )
    groups = c_in // c_in_g
    if c_out % groups != 0:
        raise ValueError(f"C_out={c_out} must be divisible by groups={groups} (C_in/weight.shape[1])")
    h_out = _out_size(H, kh, stride[0], padding[0], dilation[0])
    w_out = _out_size(W, kw, stride[1], padding[1], dilation[1])
    if h_out <= 0 or w_out <= 0:
        raise ValueError(
            f"output would be empty ({h_out}x{w_out}) for input {H}x{W}, kernel {kh}x{kw}, "
            f"stride {tuple(stride)}, padding {tuple(padding)}, dilation {tuple(dilation)}"
        )
    K = kh * kw
    if offset.dim() != 4 or offset.shape[1] % (2 * K) != 0 or offset.shape[1] == 0:
        raise ValueError(
            f"offset must have shape (N, 2*offset_groups*{kh}*{kw}, {h_out}, {w_out}) = "
            f"(N, multiple of {2 * K}, {h_out}, {w_out}), got {tuple(offset.shape)}"
        )
    offset_groups = offset.shape[1] // (2 * K)
    expected_offset = (n, 2 * offset_groups * K, h_out, w_out)
    if tuple(offset.shape) != expected_offset:
        raise ValueError(f"offset must have shape {expected_offset}, got {tuple(offset.shape)}")
    if c_in % offset_groups != 0:
        raise ValueError(
            f"input channels {c_in} must be divisible by offset_groups={offset_groups} "
            f"(inferred from offset's {offset.shape[1]} channels = 2*offset_groups*{K})"
        )
    if mask is not None:
        expected_mask = (n, offset_groups * K, h_out, w_out)
        if tuple(mask.shape) != expected_mask:
            raise ValueError(
                f"mask must have shape {expected_mask} (N, offset_groups*kh*kw, H_out, W_out), "
                f"got {tuple(mask.shape)}"
            )
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},), got {tuple(bias.shape)}")
    return groups, offset_groups


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = (1, 1),
    padding: IntPair = (0, 0),
    dilation: IntPair = (1, 1),
    mask: Optional[Tensor] = None,
    *,
    backend: str = "auto",
) -> Tensor:
    r"""Deformable 2-D convolution, :math:`y(p_0) = \sum_k w_k\, x(p_0 + p_k + \Delta p_k)\, m_k`.

    Same arguments, layouts and semantics as ``torchvision.ops.deform_conv2d``.

    Args:
        input (Tensor[N, C_in, H, W]): input features.
        offset (Tensor[N, 2 * offset_groups * kh * kw, H_out, W_out]): sampling offsets. Within
            offset group g, channel ``2k`` is dy and ``2k + 1`` is dx of kernel point ``k = i * kw + j``.
            The number of offset groups is inferred from the channel count; input channel ``c``
            uses group ``c // (C_in / offset_groups)``.
        weight (Tensor[C_out, C_in / groups, kh, kw]): convolution weights; conv groups are inferred.
        bias (Tensor[C_out], optional): bias added to every output position.
        stride, padding, dilation (int or (int, int)): as in ``nn.Conv2d``.
        mask (Tensor[N, offset_groups * kh * kw, H_out, W_out], optional): DCN v2 modulation,
            multiplied with each sample.
        backend (str): ``"auto"`` (CuPy kernels for CUDA tensors when available, else PyTorch),
            ``"torch"`` or ``"cupy"``.

    Samples are bilinear with zero padding: a sample at (y, x) counts only when ``-1 < y < H``
    and ``-1 < x < W``; corners outside the image read as zero.

    Returns:
        Tensor[N, C_out, H_out, W_out]
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    groups, offset_groups = _check_args(input, offset, weight, bias, mask, stride, padding, dilation)
    resolved = resolve_backend(backend, input.device, "deform_conv2d")
    conv = (list(stride), list(padding), list(dilation), groups, offset_groups, resolved)
    if torch.is_autocast_enabled(input.device.type):
        # Like torchvision: the PyTorch path computes in float32; the CUDA kernels take the
        # autocast dtype (float16/bfloat16) and accumulate in float32 internally.
        dtype = torch.float32
        if resolved == "cupy":
            dtype = torch.get_autocast_dtype(input.device.type)
        input, offset, weight = input.to(dtype), offset.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        mask = mask.to(dtype) if mask is not None else None
        with torch.autocast(input.device.type, enabled=False):
            return _deform_conv2d_op(input, offset, mask, weight, bias, *conv)
    return _deform_conv2d_op(input, offset, mask, weight, bias, *conv)


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------
def _conv_padding(
    padding: Union[str, IntPair],
    kernel_size: Tuple[int, int],
    stride: Tuple[int, int],
    dilation: Tuple[int, int],
) -> Tuple[Tuple[int, int], Optional[Tuple[int, int, int, int]]]:
    """nn.Conv2d's padding argument -> (symmetric padding for the op, explicit (left, right, top,
    bottom) input padding or None). ``'same'`` with an even dilated kernel pads one more pixel at
    the right/bottom, as nn.Conv2d does; that part is applied to the input explicitly."""
    if not isinstance(padding, str):
        pad = _pair(padding)
        if min(pad) < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        return pad, None
    if padding == "valid":
        return (0, 0), None
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    if stride != (1, 1):
        raise ValueError(f"padding='same' needs stride 1 (as nn.Conv2d), got stride {stride}")
    total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    if all(t % 2 == 0 for t in total):
        return (total[0] // 2, total[1] // 2), None
    (th, tw) = total
    return (0, 0), (tw // 2, tw - tw // 2, th // 2, th - th // 2)


def _check_geometry(
    in_channels: int,
    out_channels: int,
    kernel_size: Tuple[int, int],
    stride: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
) -> None:
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for name, v in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if len(v) != 2 or any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in v):
            raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    if in_channels % groups != 0:
        raise ValueError(f"in_channels={in_channels} must be divisible by groups={groups}")
    if out_channels % groups != 0:
        raise ValueError(f"out_channels={out_channels} must be divisible by groups={groups}")


class DeformConv2d(nn.Module):
    """Deformable convolution with offsets (and DCN v2 mask) given by the caller.

    A drop-in for ``torchvision.ops.DeformConv2d``: same constructor, parameters (``weight``
    ``(C_out, C_in/groups, kh, kw)``, ``bias``), initialisation and ``forward(input, offset,
    mask=None)``; the number of offset groups is read from the offset's channels. ``padding``
    also takes ``'same'`` and ``'valid'``, as ``nn.Conv2d``. For a layer that predicts its own
    offsets, see :class:`DeformConv2dPack`.

    Shapes: input (N, C_in, H, W), offset (N, 2 * offset_groups * kh * kw, H_out, W_out), mask
    (N, offset_groups * kh * kw, H_out, W_out) -> (N, C_out, H_out, W_out).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: Union[str, IntPair] = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        kernel_size, stride, dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        _check_geometry(in_channels, out_channels, kernel_size, stride, dilation, groups)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding_mode = padding if isinstance(padding, str) else None
        self.padding, self._input_padding = _conv_padding(padding, kernel_size, stride, dilation)
        self.dilation = dilation
        self.groups = groups
        self.backend = backend
        kh, kw = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's (and torchvision's DeformConv2d's) initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def _deform(self, input: Tensor, offset: Tensor, mask: Optional[Tensor]) -> Tensor:
        if self._input_padding is not None:
            input = nn.functional.pad(input, self._input_padding)
        return deform_conv2d(
            input,
            offset,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            mask,
            backend=self.backend,
        )

    def forward(
        self, input: Tensor, offset: Optional[Tensor] = None, mask: Optional[Tensor] = None
    ) -> Tensor:
        if offset is None:
            raise TypeError(
                "DeformConv2d.forward(input, offset, mask=None) needs the offsets (as torchvision's "
                "DeformConv2d); for a layer that predicts its own offsets use dcn.ops.DeformConv2dPack"
            )
        return self._deform(input, offset, mask)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding_mode is not None:
            s += f", padding={self.padding_mode!r}"
        elif self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s


class DeformConv2dPack(DeformConv2d):
    """Deformable convolution that predicts its own offsets (and, with ``modulated=True``, the
    DCN v2 mask) from its input: mmcv's ``DeformConv2dPack`` / ``ModulatedDeformConv2dPack``.

    ``weight`` and ``bias`` have the names and shapes of ``nn.Conv2d``'s, so plain conv weights
    load directly. The offset predictor ``conv_offset`` is a conv with the same kernel, stride,
    padding and dilation producing ``2 * offset_groups * kh * kw`` offset channels (plus
    ``offset_groups * kh * kw`` mask channels, passed through a sigmoid, when ``modulated``): the
    state-dict layout of mmcv's layers, so their weights load under the same keys. It is
    zero-initialised, so at init a v1 layer computes exactly ``nn.Conv2d`` with the same weight (a
    v2 layer computes it scaled by sigmoid(0) = 0.5, as in DCN v2).

    Shapes: input (N, C_in, H, W) -> output (N, C_out, H_out, W_out).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: Union[str, IntPair] = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
        modulated: bool = False,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, backend=backend
        )
        if (
            isinstance(offset_groups, bool)
            or not isinstance(offset_groups, int)
            or offset_groups < 1
            or (in_channels % offset_groups != 0)
        ):
            raise ValueError(
                f"in_channels={in_channels} must be divisible by offset_groups={offset_groups} (>= 1)"
            )
        self.offset_groups = offset_groups
        self.modulated = modulated
        kh, kw = self.kernel_size
        n_pred = offset_groups * kh * kw * (3 if modulated else 2)
        # Same geometry as the deformable conv (padding='same' included), so the predicted
        # offsets have its output size.
        self.conv_offset = nn.Conv2d(
            in_channels,
            n_pred,
            self.kernel_size,
            self.stride,
            padding if isinstance(padding, str) else self.padding,
            self.dilation,
            bias=True,
        )
        self.reset_offset_predictor()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "conv_offset"):
            self.reset_offset_predictor()

    def reset_offset_predictor(self) -> None:
        """Zero the offset predictor: the layer then samples the regular grid."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offsets_and_mask(self, input: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Predicted offset (N, 2*G*kh*kw, H_out, W_out) and mask (N, G*kh*kw, H_out, W_out) or None."""
        pred = self.conv_offset(input)
        if not self.modulated:
            return pred, None
        n_off = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        return pred[:, :n_off], torch.sigmoid(pred[:, n_off:])

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        offset, mask = self.offsets_and_mask(input)
        return self._deform(input, offset, mask)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **deform_options) -> "DeformConv2dPack":
        """A DeformConv2dPack with ``conv``'s geometry and a copy of its weight and bias.

        ``deform_options`` (``offset_groups``, ``modulated``, ``backend``) configure the deformable
        part. The result lives on ``conv``'s device and dtype.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv expects an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' convs can be converted, got {conv.padding_mode!r}")
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=conv.bias is not None,
            **deform_options,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.offset_groups != 1:
            s += f", offset_groups={self.offset_groups}"
        if self.modulated:
            s += ", modulated=True"
        return s


class ModulatedDeformConv2dPack(ModulatedByDefault, DeformConv2dPack):
    """:class:`DeformConv2dPack` with ``modulated=True`` (DCN v2), under mmcv's name."""
