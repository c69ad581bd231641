"""Deformable RoI pooling (Dai et al. 2017, sec. 2.2; DCN v2 modulation as an option).

Public API, following ``torchvision.ops.roi_align``'s signature order, box formats and layouts:

* :func:`deform_roi_pool` — the functional op: RoIAlign whose bins are shifted by given offsets;
* :class:`DeformRoIPool` — the module with caller-given offsets (mmcv's ``DeformRoIPool``);
* :class:`DeformRoIPoolPack` (and :class:`ModulatedDeformRoIPoolPack`) — the module that owns its
  offset head (offset-free pooling -> FCs), mmcv's names;
* :class:`MultiScaleDeformRoIPool` — the FPN version, a drop-in for
  ``torchvision.ops.MultiScaleRoIAlign`` (same ``forward(features, proposals, image_shapes)``).

The op dispatches to a backend like :func:`dcn.ops.deform_conv2d`: ``"torch"`` (any device,
:mod:`dcn.ops._torch_deform_roi_pool`) or ``"cupy"`` (CUDA kernels,
:mod:`dcn.ops._cupy_deform_roi_pool`); ``"auto"`` picks CuPy for CUDA tensors when it is
usable. It is registered with ``torch.library`` as ``dcn::deform_roi_pool`` (+ backward op),
with fake implementations and autograd, so ``torch.compile`` and ``opcheck`` work.

GPU behaviour:

* autocast: boxes and offsets stay float32 (as in torchvision's roi_align); the PyTorch path computes
  in float32 and the CUDA kernels read the features in the autocast dtype, computing in float32;
* CUDA-graph capture: the eager check of the boxes' batch indices (a device-to-host copy) is skipped
  while a graph is captured; the CUDA kernels then pool a RoI with an invalid index to zero;
* ``torch.use_deterministic_algorithms(True)``: on every device but the CPU (whose backward is
  deterministic already) the backward runs autograd over :mod:`dcn.ops._composite_deform_roi_pool`
  (see :func:`dcn.ops._dispatch.backward_route`), bit-reproducible on CUDA.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops.poolers import LevelMapper

from dcn.ops import _composite_deform_roi_pool
from dcn.ops._backend import PoolInputs, PoolParams
from dcn.ops._dispatch import BACKENDS, backward_route, composite_gradients, implementation, resolve_backend
from dcn.ops._modulated import ModulatedByDefault

__all__ = [
    "deform_roi_pool",
    "DeformRoIPool",
    "DeformRoIPoolPack",
    "ModulatedDeformRoIPoolPack",
    "MultiScaleDeformRoIPool",
]

Boxes = Union[Tensor, Sequence[Tensor]]
IntPair = Union[int, Tuple[int, int], Sequence[int]]
OFFSET_HEADS = ("shared", "per_level")  # MultiScaleDeformRoIPool: one offset head, or one per pyramid level


def _impl(backend: str) -> ModuleType:
    return implementation("deform_roi_pool", backend)


# --------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------
# The ops' schemas: the tensors, roi_align's settings with the offset scale, and the backend.
_POOL_ARGS = (
    "Tensor input, Tensor rois, Tensor? offset, "
    "int[] output_size, float spatial_scale, int sampling_ratio, float gamma, bool aligned, str backend"
)


@torch.library.custom_op("dcn::deform_roi_pool", mutates_args=(), schema=f"({_POOL_ARGS}) -> Tensor")
def _deform_roi_pool_op(input, rois, offset, *conf) -> Tensor:
    *pool, backend = conf
    return _impl(backend).deform_roi_pool_forward(PoolInputs(input, rois, offset), PoolParams(*pool))


@_deform_roi_pool_op.register_fake
def _(input, rois, offset, output_size, *conf):
    return input.new_empty((rois.shape[0], input.shape[1], output_size[0], output_size[1]))


@torch.library.custom_op(
    "dcn::deform_roi_pool_backward",
    mutates_args=(),
    schema=f"(Tensor grad_out, {_POOL_ARGS}, bool[] needs_input_grad) -> Tensor[]",
)
def _deform_roi_pool_backward_op(grad_out, input, rois, offset, *conf_and_needs) -> List[Tensor]:
    """Returns [grad_input, grad_offset]; an empty tensor stands for a gradient that was not
    requested (custom ops cannot return None)."""
    *pool, backend, needs_input_grad = conf_and_needs
    x = PoolInputs(input, rois, offset)
    grads = _impl(backend).deform_roi_pool_backward(
        grad_out.contiguous(), x, PoolParams(*pool), needs_input_grad
    )
    return [g if g is not None else input.new_empty(0) for g in grads]


@_deform_roi_pool_backward_op.register_fake
def _(grad_out, input, rois, offset, *conf_and_needs):
    needs_input_grad = conf_and_needs[-1]
    return [
        t.new_empty(t.shape) if (need and t is not None) else input.new_empty(0)
        for t, need in zip((input, offset), needs_input_grad)
    ]


def _setup_context(ctx, inputs, output):
    input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, aligned, backend = inputs
    ctx.save_for_backward(input, rois, offset)
    ctx.conf = (output_size, spatial_scale, sampling_ratio, gamma, aligned, backend)


def _backward(ctx, grad_out):
    input, rois, offset = ctx.saved_tensors
    needs = [ctx.needs_input_grad[0], offset is not None and ctx.needs_input_grad[2]]
    # Grad mode is on in a backward only under create_graph=True (backward of the backward).
    create_graph = torch.is_grad_enabled()
    route = backward_route(input.device.type, torch.are_deterministic_algorithms_enabled(), create_graph)
    if route == "composite":
        pool = ctx.conf[:-1]
        g_in, _, g_off = composite_gradients(
            lambda *tensors: _composite_deform_roi_pool.deform_roi_pool(
                PoolInputs(*tensors), PoolParams(*pool)
            ),
            (input, rois, offset),
            (needs[0], False, needs[1]),
            grad_out,
            create_graph,
        )
    else:
        grads = _deform_roi_pool_backward_op(grad_out, input, rois, offset, *ctx.conf, needs)
        g_in, g_off = (g if need else None for g, need in zip(grads, needs))
    # Like roi_align, the boxes get no gradient.
    return g_in, None, g_off, None, None, None, None, None, None


_deform_roi_pool_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------
def _capturing_cuda_graph(device: torch.device) -> bool:
    """True while a CUDA graph is captured on the current stream (device-to-host copies would fail)."""
    # Only CUDA tensors can be captured; on a machine without a CUDA driver the query itself raises.
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def pyramid_levels(
    features: Sequence[Tensor],
    image_shapes: Sequence[Tuple[int, int]],
    canonical_scale: int = 224,
    canonical_level: int = 4,
) -> Tuple[List[float], LevelMapper]:
    """Each feature map's scale relative to the images and the box-to-level rule, as
    ``torchvision.ops.MultiScaleRoIAlign`` infers them on its first call.

    A level's scale is ``2**-k``, k the integer nearest to ``log2(image height / map height)``
    (the largest image height of the batch; the network halves the resolution at each level).
    The levels ``k_min..k_max`` of the first and last map give torchvision's ``LevelMapper`` (FPN
    eq. 1: a box of side ``canonical_scale`` goes to ``canonical_level``).
    """
    if not image_shapes:
        raise ValueError("image_shapes must give the (H, W) of at least one image")
    image_height = max(int(shape[0]) for shape in image_shapes)
    scales = [2.0 ** round(math.log2(f.shape[-2] / image_height)) for f in features]
    k_min, k_max = (int(-math.log2(s)) for s in (scales[0], scales[-1]))
    return scales, LevelMapper(k_min, k_max, canonical_scale, canonical_level, eps=1e-6)


def _to_rois(boxes: Boxes, input: Tensor) -> Tensor:
    """Tensor[K, 5] (batch index, x1, y1, x2, y2) from either box format: float32 under autocast
    (a bfloat16 coordinate has 4 px steps at 512-1024 px; torchvision's roi_align keeps boxes float32
    too), else in input's dtype."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                "boxes must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of "
                f"Tensor[L, 4] (x1, y1, x2, y2) per image; got a tensor of shape {tuple(boxes.shape)}"
            )
        rois = boxes
    elif isinstance(boxes, (list, tuple)):
        if len(boxes) > input.shape[0]:
            raise ValueError(
                f"boxes is a list of {len(boxes)} per-image tensors but input has only "
                f"{input.shape[0]} images"
            )
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"boxes[{i}] must be a Tensor[L, 4] (x1, y1, x2, y2), got {shape}")
        if not boxes:
            return input.new_zeros((0, 5))
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0
        )
    else:
        raise TypeError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    if not rois.is_floating_point():
        raise TypeError(f"boxes must be floating point, got {rois.dtype}")
    if rois.device != input.device:
        raise ValueError(f"boxes are on {rois.device} but input is on {input.device}; they must match")
    rois = rois.to(torch.float32 if torch.is_autocast_enabled(input.device.type) else input.dtype)
    if rois.shape[0] and not torch.compiler.is_compiling() and not _capturing_cuda_graph(input.device):
        # One host sync in eager mode, to turn silent garbage into an error. Skipped while a CUDA graph
        # is captured, where a sync is an error: the CUDA kernels then pool a RoI whose batch index is
        # outside [0, N) to zero.
        idx = rois[:, 0]
        bad_index, bad_coords = torch.stack(
            (
                ((idx < 0) | (idx >= input.shape[0]) | (idx != idx.floor())).any(),
                ~torch.isfinite(rois[:, 1:]).all(),
            )
        ).tolist()
        if bad_index:
            raise ValueError(
                f"boxes[:, 0] must hold integer batch indices in [0, {input.shape[0] - 1}] "
                f"(input has {input.shape[0]} images); got values {idx.unique()[:8].tolist()}"
            )
        if bad_coords:
            raise ValueError("boxes hold non-finite coordinates (inf or nan)")
    return rois


def _check_pool_settings(
    output_size: Tuple[int, ...],
    sampling_ratio: int,
    spatial_scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> None:
    """The pooling settings of the functional op and every module (None: not checked here)."""
    if len(output_size) != 2 or min(output_size) < 1:
        raise ValueError(f"output_size must be positive (int or (out_h, out_w)), got {output_size}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        # Also what DeformRoIPool(in_channels, output_size, spatial_scale), the self-predicting
        # layer's former signature, gives: name the layer that has it now.
        raise TypeError(
            f"sampling_ratio must be an integer, got {sampling_ratio!r}. DeformRoIPool(output_size, "
            "spatial_scale, sampling_ratio) takes the offsets in forward(input, rois, offset); the layer "
            "that predicts them is DeformRoIPoolPack(in_channels, output_size, spatial_scale)"
        )
    if sampling_ratio < 0:
        raise ValueError(
            f"sampling_ratio must be >= 0 (0 = adaptive, ceil(roi_size / output_size)), got {sampling_ratio}"
        )
    if spatial_scale is not None and (not spatial_scale > 0 or not math.isfinite(spatial_scale)):
        raise ValueError(f"spatial_scale must be positive and finite, got {spatial_scale}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def _check_input(input: Tensor) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"input must have a non-empty spatial size, got {tuple(input.shape)}")


def _check_offset(offset: Optional[Tensor], input: Tensor, output_size: Tuple[int, int], k: int) -> None:
    if offset is None:
        return
    if not isinstance(offset, Tensor):
        raise TypeError(f"offset must be a Tensor or None, got {type(offset).__name__}")
    expected = (k, 2, output_size[0], output_size[1])
    if tuple(offset.shape) != expected:
        raise ValueError(
            f"offset must have shape (K, 2, out_h, out_w) = {expected} for {k} boxes, "
            f"got {tuple(offset.shape)}"
        )
    # Under autocast both are cast (offsets to float32), so their dtypes need not match.
    if offset.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
        raise TypeError(f"offset has dtype {offset.dtype} but input has {input.dtype}; they must match")
    if offset.device != input.device:
        raise ValueError(f"offset is on {offset.device} but input is on {input.device}; they must match")


# --------------------------------------------------------------------------------------
# Public functional op
# --------------------------------------------------------------------------------------
def deform_roi_pool(
    input: Tensor,
    boxes: Boxes,
    offset: Optional[Tensor] = None,
    output_size: IntPair = 7,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    *,
    aligned: bool = True,
    backend: str = "auto",
) -> Tensor:
    r"""Deformable RoI pooling: RoIAlign whose bins are shifted by RoI-size-normalised offsets.

    Bin (i, j) of RoI k is the mean of the bilinear samples of ``roi_align``'s bin (i, j),
    moved by :math:`\gamma \cdot (w_k \cdot \text{offset}[k, 0, i, j],\ h_k \cdot \text{offset}[k, 1, i, j])`
    where :math:`w_k, h_k` are the RoI's width and height in feature coordinates.
    With ``offset=None`` (or zero) the result equals
    ``torchvision.ops.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)``.

    Args:
        input (Tensor[N, C, H, W]): features.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): boxes in input-image coordinates, as for
            ``roi_align``: rows (batch_index, x1, y1, x2, y2), or one (x1, y1, x2, y2) tensor per image.
        offset (Tensor[K, 2, out_h, out_w], optional): normalised bin offsets; channel 0 moves
            bins along x, channel 1 along y.
        output_size (int or (int, int)): (out_h, out_w).
        spatial_scale (float): feature size / image size, e.g. 1/16.
        sampling_ratio (int): samples per bin along each axis; 0 = adaptive, ceil(roi_size / out_size)
            per RoI.
        gamma (float): offset scale (0.1 in the paper).
        aligned (bool): roi_align's pixel-shift convention; True (the default here) shifts boxes
            by -0.5 and allows any RoI size; False is roi_align's legacy geometry (RoIs at least 1x1).
        backend (str): ``"auto"`` (CuPy kernels for CUDA tensors when available, else PyTorch),
            ``"torch"`` or ``"cupy"``.

    Samples follow roi_align's border rule: a sample with y < -1 or y > H (or x likewise)
    contributes zero, otherwise its coordinate is clamped into the map. Degenerate boxes
    (x2 < x1) pool to zero with adaptive sampling, as in roi_align.

    Under autocast the boxes and offsets are used in float32; the result is float32 on the
    PyTorch backend and in the autocast dtype on the CuPy backend.

    Returns:
        Tensor[K, C, out_h, out_w]
    """
    output_size = tuple(_pair(output_size))
    _check_input(input)
    _check_pool_settings(output_size, sampling_ratio, spatial_scale)
    rois = _to_rois(boxes, input)
    _check_offset(offset, input, output_size, rois.shape[0])
    resolved = resolve_backend(backend, input.device, "deform_roi_pool")
    args = (
        list(output_size),
        float(spatial_scale),
        int(sampling_ratio),
        float(gamma),
        bool(aligned),
        resolved,
    )
    if torch.is_autocast_enabled(input.device.type):
        # Boxes (already float32, see _to_rois) and offsets stay float32, as in torchvision's
        # roi_align: in bfloat16 a box coordinate has 4 px steps at 512-1024 px. The PyTorch path
        # computes in float32; the CUDA kernels read the features in the autocast dtype
        # (float16/bfloat16) and compute in float32.
        dtype = torch.float32
        if resolved == "cupy":
            dtype = torch.get_autocast_dtype(input.device.type)
        input = input.to(dtype)
        offset = offset.float() if offset is not None else None
        with torch.autocast(input.device.type, enabled=False):
            return _deform_roi_pool_op(input, rois, offset, *args)
    return _deform_roi_pool_op(input, rois, offset, *args)


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------
class _OffsetHead(nn.Module):
    """FC-ReLU-FC-ReLU-FC from a flattened offset-free pooling to per-bin offsets (and mask).

    The last layer is zero-initialised: offsets start at 0 (the pooling is RoIAlign) and
    mask logits at 0 (mask = sigmoid(0) = 0.5, DCN v2's initialisation).
    """

    def __init__(
        self, in_channels: int, output_size: Tuple[int, int], hidden_channels: int, modulated: bool
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.modulated = modulated
        bins = output_size[0] * output_size[1]
        self.fc = nn.Sequential(
            nn.Linear(in_channels * bins, hidden_channels),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, hidden_channels),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, (3 if modulated else 2) * bins),
        )
        self.reset_last_layer()

    def reset_last_layer(self) -> None:
        nn.init.zeros_(self.fc[-1].weight)
        nn.init.zeros_(self.fc[-1].bias)

    def forward(self, pooled: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """pooled (K, C, out_h, out_w) -> offset (K, 2, out_h, out_w), mask (K, 1, out_h, out_w) or None."""
        k = pooled.shape[0]
        h, w = self.output_size
        pred = self.fc(pooled.flatten(1))
        offset = pred[:, : 2 * h * w].reshape(k, 2, h, w)
        if not self.modulated:
            return offset, None
        return offset, torch.sigmoid(pred[:, 2 * h * w :]).reshape(k, 1, h, w)


def _check_head_args(in_channels: int, hidden_channels: int) -> None:
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}")
    if hidden_channels < 1:
        raise ValueError(f"hidden_channels must be positive, got {hidden_channels}")


class DeformRoIPool(nn.Module):
    """Deformable RoI pooling with bin offsets given by the caller (mmcv's ``DeformRoIPool``).

    ``forward(input, rois, offset=None)`` is :func:`deform_roi_pool` with this module's settings;
    without offsets it is ``torchvision.ops.RoIAlign(output_size, spatial_scale, sampling_ratio,
    aligned)``. For a layer that predicts its own offsets, see :class:`DeformRoIPoolPack`.

    Shapes: input (N, C, H, W), rois Tensor[K, 5] or List[Tensor[L, 4]], offset (K, 2, out_h, out_w)
    -> (K, C, out_h, out_w).
    """

    def __init__(
        self,
        output_size: IntPair,
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
        *,
        aligned: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        output_size = tuple(_pair(output_size))
        _check_pool_settings(output_size, sampling_ratio, spatial_scale, backend)
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.gamma = gamma
        self.aligned = aligned
        self.backend = backend

    def _pool(self, input: Tensor, rois: Boxes, offset: Optional[Tensor]) -> Tensor:
        return deform_roi_pool(
            input,
            rois,
            offset,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.gamma,
            aligned=self.aligned,
            backend=self.backend,
        )

    def forward(self, input: Tensor, rois: Boxes, offset: Optional[Tensor] = None) -> Tensor:
        return self._pool(input, rois, offset)

    def extra_repr(self) -> str:
        s = (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}"
        )
        if not self.aligned:
            s += ", aligned=False"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s


class DeformRoIPoolPack(DeformRoIPool):
    """Deformable RoI pooling that predicts its own bin offsets (and DCN v2 mask): mmcv's
    ``DeformRoIPoolPack`` / ``ModulatedDeformRoIPoolPack``.

    Pipeline (Dai et al. 2017, fig. 3): RoIAlign without offsets -> flatten ->
    FC(hidden)-ReLU-FC(hidden)-ReLU-FC(2 * out_h * out_w) -> offsets -> deformable pooling.
    The last FC is zero-initialised, so at init the module computes exactly
    ``torchvision.ops.RoIAlign(output_size, spatial_scale, sampling_ratio, aligned)``.
    With ``modulated=True`` the last FC also predicts one mask logit per bin and the output is
    multiplied by ``sigmoid(logit)`` (DCN v2); at init that mask is 0.5 everywhere. (One head,
    ``offset_head.fc``, predicts offsets and mask logits; mmcv keeps separate ``offset_fc`` and
    ``mask_fc`` heads, so its RoI pooling weights do not load here.)

    Shapes: input (N, C, H, W), rois Tensor[K, 5] or List[Tensor[L, 4]] -> (K, C, out_h, out_w).
    """

    def __init__(
        self,
        in_channels: int,
        output_size: IntPair,
        spatial_scale: float,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
        hidden_channels: int = 1024,
        modulated: bool = False,
        *,
        aligned: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma, aligned=aligned, backend=backend)
        _check_head_args(in_channels, hidden_channels)
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.modulated = modulated
        self.offset_head = _OffsetHead(in_channels, self.output_size, hidden_channels, modulated)

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:  # type: ignore[override]
        if input.dim() == 4 and input.shape[1] != self.in_channels:
            raise ValueError(f"expected input with {self.in_channels} channels, got {tuple(input.shape)}")
        rois = _to_rois(rois, input)
        offset, mask = self.offset_head(self._pool(input, rois, None))
        out = self._pool(input, rois, offset)
        return out * mask if mask is not None else out

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, " + super().extra_repr() + f", hidden_channels={self.hidden_channels}"
        if self.modulated:
            s += ", modulated=True"
        return s


class ModulatedDeformRoIPoolPack(ModulatedByDefault, DeformRoIPoolPack):
    """:class:`DeformRoIPoolPack` with ``modulated=True`` (DCN v2), under mmcv's name."""


class MultiScaleDeformRoIPool(nn.Module):
    """Deformable RoI pooling over a feature pyramid; drop-in for ``torchvision.ops.MultiScaleRoIAlign``.

    ``forward(x, boxes, image_shapes)`` takes the same arguments as MultiScaleRoIAlign's and
    assigns each box to a level with torchvision's own rule (FPN eq. 1 via its ``LevelMapper``,
    scales inferred from the feature and image sizes). Each box is pooled at its level, first
    without offsets; an offset head predicts the bin offsets; then each box is pooled again with
    them. ``offset_heads="shared"`` (default) uses one head for all levels (offsets are
    normalised by RoI size, so they need not depend on the level; one head sees every box);
    ``"per_level"`` gives each level its own head, as mmdetection's FPN RoI extractor with
    DeformRoIPoolPack does (len(featmap_names) x the parameters). Heads are zero-initialised, so at
    init the module equals MultiScaleRoIAlign (for ``aligned=False``, the default here because that is what
    MultiScaleRoIAlign and torchvision's detection models use; ``modulated=True`` scales it by 0.5).

    Args:
        featmap_names (List[str]): names of the pooled feature maps, as in MultiScaleRoIAlign.
        output_size (int or (int, int)), sampling_ratio (int): as in MultiScaleRoIAlign.
        in_channels (int): channels of the feature maps (the offset head's input is C*out_h*out_w).
        gamma, hidden_channels, modulated: as in :class:`DeformRoIPoolPack`.
        canonical_scale, canonical_level: torchvision's LevelMapper parameters.
        aligned (bool): roi_align's pixel convention (False in MultiScaleRoIAlign).
        offset_heads (str): ``"shared"`` (one offset head) or ``"per_level"`` (one per feature map).

    Shapes: x[name] (N, C, H_l, W_l); boxes List[Tensor[L_i, 4]] in image coordinates;
    image_shapes List[(height, width)] -> (sum L_i, C, out_h, out_w).
    """

    def __init__(
        self,
        featmap_names: List[str],
        output_size: IntPair,
        sampling_ratio: int,
        in_channels: int,
        *,
        gamma: float = 0.1,
        hidden_channels: int = 1024,
        modulated: bool = False,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
        offset_heads: str = "shared",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        output_size = tuple(_pair(output_size))
        _check_pool_settings(output_size, sampling_ratio, backend=backend)
        _check_head_args(in_channels, hidden_channels)
        if not featmap_names:
            raise ValueError("featmap_names must name at least one feature map")
        if offset_heads not in OFFSET_HEADS:
            raise ValueError(f"offset_heads must be one of {list(OFFSET_HEADS)}, got {offset_heads!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.in_channels = in_channels
        self.gamma = gamma
        self.hidden_channels = hidden_channels
        self.modulated = modulated
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.backend = backend
        self.offset_heads_mode = offset_heads
        # Separate attribute names, so a checkpoint's keys say which kind it was trained with.
        if offset_heads == "shared":
            self.offset_head = _OffsetHead(in_channels, output_size, hidden_channels, modulated)
        else:
            self.offset_heads = nn.ModuleList(
                _OffsetHead(in_channels, output_size, hidden_channels, modulated) for _ in self.featmap_names
            )
        # Inferred on the first call, as torchvision does.
        self.scales: Optional[List[float]] = None
        self.map_levels = None

    def _pool_levels(
        self, features: List[Tensor], rois: Tensor, level_index: List[Tensor], offset: Optional[Tensor]
    ) -> Tensor:
        out = features[0].new_zeros((rois.shape[0], self.in_channels) + self.output_size)
        for feat, scale, idx in zip(features, self.scales, level_index):
            if idx.numel() == 0:
                continue
            pooled = deform_roi_pool(
                feat,
                rois[idx],
                offset[idx] if offset is not None else None,
                self.output_size,
                scale,
                self.sampling_ratio,
                self.gamma,
                aligned=self.aligned,
                backend=self.backend,
            )
            # Under autocast the PyTorch path returns float32 for 16-bit features (as torchvision does).
            out[idx] = pooled.to(out.dtype)
        return out

    def forward(
        self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]
    ) -> Tensor:
        missing = [name for name in self.featmap_names if name not in x]
        if missing:
            raise ValueError(f"feature maps {missing} (featmap_names) are missing from x (keys {list(x)})")
        if not isinstance(boxes, (list, tuple)):
            raise TypeError(f"boxes must be a list of Tensor[L, 4] per image, got {type(boxes).__name__}")
        # In x's order, as MultiScaleRoIAlign takes them (fine to coarse).
        names = [name for name in x if name in self.featmap_names]
        features = [x[name] for name in names]
        for name, f in zip(names, features):
            if f.dim() != 4 or f.shape[1] != self.in_channels:
                raise ValueError(
                    f"feature map {name!r} must be (N, {self.in_channels}, H, W), got {tuple(f.shape)}"
                )
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = pyramid_levels(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _to_rois(boxes, features[0])
        if len(features) == 1:
            levels = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
        else:
            levels = self.map_levels(list(boxes))
        level_index = [torch.where(levels == lvl)[0] for lvl in range(len(features))]
        offset, mask = self._predict_offsets(
            self._pool_levels(features, rois, level_index, None), level_index
        )
        out = self._pool_levels(features, rois, level_index, offset)
        return out * mask if mask is not None else out

    def _predict_offsets(self, pooled: Tensor, level_index: List[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """pooled (K, C, out_h, out_w) -> offset (K, 2, out_h, out_w), mask (K, 1, out_h, out_w) or None."""
        if self.offset_heads_mode == "shared":
            return self.offset_head(pooled)
        k, (h, w) = pooled.shape[0], self.output_size
        offset = pooled.new_zeros((k, 2, h, w))
        mask = pooled.new_zeros((k, 1, h, w)) if self.modulated else None
        for head, idx in zip(self.offset_heads, level_index):
            if idx.numel():
                level_offset, level_mask = head(pooled[idx])
                offset = offset.index_copy(0, idx, level_offset)
                if mask is not None:
                    mask = mask.index_copy(0, idx, level_mask)
        return offset, mask

    def extra_repr(self) -> str:
        s = (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, in_channels={self.in_channels}, gamma={self.gamma}, "
            f"hidden_channels={self.hidden_channels}"
        )
        if self.modulated:
            s += ", modulated=True"
        if self.aligned:
            s += ", aligned=True"
        if self.offset_heads_mode != "shared":
            s += f", offset_heads={self.offset_heads_mode!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s
