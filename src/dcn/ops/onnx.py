"""ONNX export of dcn's ops: ``deform_conv2d`` as the standard ``DeformConv`` operator, ``deform_roi_pool``
as a decomposition into standard operators.

* ``dcn::deform_conv2d`` -> ONNX ``DeformConv`` (opset >= 19; ONNX Runtime runs it on CPU, TensorRT's
  ONNX parser from 10.1). Every configuration maps one to one: conv groups (``group``), offset groups
  (``offset_group``), mask, bias, stride, padding (``pads`` = [top, left, bottom, right]), dilation,
  non-square kernels. The sampling rule is the same as dcn's (bilinear, zero outside, a sample counts
  when ``-1 < y < H`` and ``-1 < x < W``; checked in ONNX Runtime in tests/ops/test_onnx.py). One
  difference, data-dependent and so not refusable at export: ONNX Runtime reads a NaN offset as a
  sample outside the image (zero), where dcn's PyTorch op gives NaN.
* ``dcn::deform_roi_pool`` has no ONNX operator. It is exported as the PyTorch path computes it: per
  bin, the sample coordinates (roi_align's grid moved by the offsets), roi_align's border rule (cut
  outside ``[-1, H]``, clamp into ``[0, H - 1]``), the four bilinear corners gathered from a
  channels-last pixel table (``Gather``) and averaged with their weights (``MatMul``): exact, any
  batch index, any opset >= 15, ``sampling_ratio`` fixed or adaptive (the adaptive grid is padded
  to the largest RoI's, so memory grows with the largest box). The default exporter only: under the
  TorchScript exporter it is refused with an error that says so.

Two exporters:

* ``torch.onnx.export(..., dynamo=True)`` (torch's default): pass
  ``custom_translation_table=translation_table()``, or call :func:`export_onnx`, which does that and
  checks the opset.
* ``torch.onnx.export(..., dynamo=False)`` (TorchScript, deprecated by torch): importing this module
  registers the symbolics (:func:`register_symbolics`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import dcn.ops.deform_conv  # noqa: F401  (registers torch.ops.dcn.deform_conv2d)
import dcn.ops.deform_roi_pool  # noqa: F401  (registers torch.ops.dcn.deform_roi_pool)

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ONNXExportError",
    "deform_conv2d_to_onnx",
    "deform_roi_pool_to_onnx",
    "export_onnx",
    "register_symbolics",
    "translation_table",
]

MIN_OPSET = 19  # ONNX DeformConv appeared in opset 19
DEFAULT_OPSET = 20  # torch.onnx.export's default; DeformConv-19 and -22 differ only in the types they list


class ONNXExportError(RuntimeError):
    """A dcn op that cannot be exported as asked; the message says why and what to do instead."""


def _target_opset() -> Optional[int]:
    """The default-domain opset the exporter is building, when it says (onnxscript's evaluator)."""
    import onnxscript.evaluator

    opset = getattr(onnxscript.evaluator.default(), "opset", None)
    version = getattr(opset, "version", None)
    return int(version) if isinstance(version, int) else None


def _opset_error(opset: int, what: str) -> ONNXExportError:
    return ONNXExportError(
        f"{what} exports to the ONNX DeformConv operator, which needs opset >= {MIN_OPSET}; this export "
        f"targets opset {opset}. Pass opset_version={DEFAULT_OPSET} (or any >= {MIN_OPSET})."
    )


def _require_opset(opset: Optional[int], what: str) -> None:
    if opset is not None and opset < MIN_OPSET:
        raise _opset_error(opset, what)


def _deform_conv_attributes(
    stride, padding, dilation, groups, offset_groups, kernel_shape: Optional[List[int]]
) -> Dict[str, Any]:
    """ONNX ``DeformConv``'s attributes; ``kernel_shape`` is left out when not known statically."""
    attributes: Dict[str, Any] = dict(
        strides=list(stride),
        pads=[padding[0], padding[1], padding[0], padding[1]],  # (begin_h, begin_w, end_h, end_w)
        dilations=list(dilation),
        group=int(groups),
        offset_group=int(offset_groups),
    )
    if kernel_shape is not None:
        attributes["kernel_shape"] = kernel_shape
    return attributes


# --------------------------------------------------------------------------------------
# The default exporter (torch.export -> onnxscript translations)
# --------------------------------------------------------------------------------------
def deform_conv2d_to_onnx(
    input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups, backend
):
    """Translation of ``dcn::deform_conv2d`` (same arguments) into one ONNX ``DeformConv`` node."""
    from onnxscript import opset19 as op

    _require_opset(_target_opset(), "dcn::deform_conv2d")
    kernel = getattr(weight, "shape", None)
    known = (
        kernel is not None and len(kernel) == 4 and all(isinstance(k, int) for k in (kernel[2], kernel[3]))
    )
    attributes = _deform_conv_attributes(
        stride, padding, dilation, groups, offset_groups, [kernel[2], kernel[3]] if known else None
    )
    # ONNX's input order is (X, W, offset, B, mask); None leaves an optional input out.
    return op.DeformConv(input, weight, offset, bias, mask, **attributes)


def deform_roi_pool_to_onnx(
    input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, aligned, backend
):
    """Translation of ``dcn::deform_roi_pool`` (same arguments) into standard ONNX operators.

    Shapes: input (N, C, H, W), rois (K, 5), offset (K, 2, out_h, out_w) or None -> (K, C, out_h, out_w).
    The arithmetic follows :mod:`dcn.ops._torch_deform_roi_pool` step by step.
    """
    import numpy as np
    from onnxscript import INT64, ir
    from onnxscript import opset19 as op

    out_h, out_w = int(output_size[0]), int(output_size[1])
    bins = out_h * out_w

    dtype = getattr(input, "dtype", None)

    def const(values):
        """A 1-D constant in the input's dtype, made there (0.1 rounded to float32 would not
        match float64)."""
        if dtype is None:
            return op.CastLike(op.Constant(value_floats=[float(v) for v in values]), input)
        return op.Constant(value=ir.tensor(np.asarray([float(v) for v in values], dtype=dtype.numpy())))

    def ints(values):
        return op.Constant(value_ints=[int(v) for v in values])

    def column(j):  # rois[:, j] as (K, 1, 1, 1, 1): RoI-wise factors broadcast over (bin_y, bin_x, iy, ix)
        return op.Reshape(op.Slice(rois, ints([j]), ints([j + 1]), ints([1])), ints([-1, 1, 1, 1, 1]))

    one, zero = const([1.0]), const([0.0])
    height_i = op.Shape(input, start=2, end=3)
    width_i = op.Shape(input, start=3, end=4)
    height_f, width_f = op.CastLike(height_i, input), op.CastLike(width_i, input)

    shift = const([0.5 if aligned else 0.0])
    scale = const([spatial_scale])
    start_x = op.Sub(op.Mul(column(1), scale), shift)
    start_y = op.Sub(op.Mul(column(2), scale), shift)
    roi_w = op.Sub(op.Sub(op.Mul(column(3), scale), shift), start_x)
    roi_h = op.Sub(op.Sub(op.Mul(column(4), scale), shift), start_y)
    if not aligned:  # legacy roi_align: RoIs at least 1x1
        roi_w, roi_h = op.Max(roi_w, one), op.Max(roi_h, one)
    bin_w = op.Div(roi_w, const([out_w]))
    bin_h = op.Div(roi_h, const([out_h]))

    bin_y = op.Reshape(const(range(out_h)), ints([1, out_h, 1, 1, 1]))
    bin_x = op.Reshape(const(range(out_w)), ints([1, 1, out_w, 1, 1]))
    if sampling_ratio > 0:
        grid_h = grid_w = const([sampling_ratio])
        half = const([i + 0.5 for i in range(sampling_ratio)])
        iy, ix = op.Reshape(half, ints([1, 1, 1, -1, 1])), op.Reshape(half, ints([1, 1, 1, 1, -1]))
        in_grid_y = in_grid_x = None
        count = const([sampling_ratio * sampling_ratio])
        samples = ints([sampling_ratio * sampling_ratio])
    else:
        # Adaptive: ceil(bin size) samples per RoI (zero for a degenerate RoI); every RoI is laid on the
        # largest grid and the samples beyond its own are cut.
        grid_h = op.Max(op.Ceil(bin_h), zero)
        grid_w = op.Max(op.Ceil(bin_w), zero)

        def arange_to_max(grid, shape):
            largest = op.ReduceMax(op.Concat(op.Reshape(grid, ints([-1])), one, axis=0), keepdims=0)
            return op.Reshape(
                op.CastLike(
                    op.Range(
                        op.Constant(value_int=0), op.Cast(largest, to=INT64.dtype), op.Constant(value_int=1)
                    ),
                    input,
                ),
                ints(shape),
            )

        index_y = arange_to_max(grid_h, [1, 1, 1, -1, 1])
        index_x = arange_to_max(grid_w, [1, 1, 1, 1, -1])
        in_grid_y, in_grid_x = op.Less(index_y, grid_h), op.Less(index_x, grid_w)
        iy, ix = op.Add(index_y, const([0.5])), op.Add(index_x, const([0.5]))
        count = op.Max(op.Mul(grid_h, grid_w), one)
        grid_h, grid_w = op.Max(grid_h, one), op.Max(grid_w, one)  # divisors: cut samples stay finite
        samples = op.Mul(op.Shape(index_y, start=3, end=4), op.Shape(index_x, start=4, end=5))

    # Same operation order as the PyTorch path (and torchvision's roi_align) for the coordinates.
    y = op.Add(
        op.Add(start_y, op.Mul(bin_y, bin_h)), op.Div(op.Mul(iy, bin_h), grid_h)
    )  # (K, out_h, 1, Gh, 1)
    x = op.Add(
        op.Add(start_x, op.Mul(bin_x, bin_w)), op.Div(op.Mul(ix, bin_w), grid_w)
    )  # (K, 1, out_w, 1, Gw)
    if offset is not None:
        g = const([gamma])
        per_bin = ints([-1, out_h, out_w, 1, 1])
        offset_x = op.Reshape(op.Slice(offset, ints([0]), ints([1]), ints([1])), per_bin)
        offset_y = op.Reshape(op.Slice(offset, ints([1]), ints([2]), ints([1])), per_bin)
        y = op.Add(y, op.Mul(op.Mul(g, roi_h), offset_y))  # (K, out_h, out_w, Gh, 1)
        x = op.Add(x, op.Mul(op.Mul(g, roi_w), offset_x))  # (K, out_h, out_w, 1, Gw)

    def axis(c, size_f, size_i, in_grid):
        """roi_align's rule along one axis: cut outside [-1, size], clamp into [0, size - 1]."""
        keep = op.And(op.GreaterOrEqual(c, const([-1.0])), op.LessOrEqual(c, size_f))  # False for NaN
        if in_grid is not None:
            keep = op.And(keep, in_grid)
        nan = op.IsNaN(c)
        clamped = op.Where(nan, zero, op.Max(op.Min(c, op.Sub(size_f, one)), zero))  # NaN reads pixel 0 ...
        low = op.Floor(clamped)
        frac = op.Sub(clamped, low)
        low_i = op.Cast(low, to=INT64.dtype)
        high_i = op.Min(op.Add(low_i, op.Constant(value_int=1)), op.Sub(size_i, op.Constant(value_int=1)))
        factor = op.Where(keep, one, zero)
        factor = op.Where(nan, const([float("nan")]), factor)  # ... with a NaN weight: the bin is NaN
        return low_i, high_i, frac, op.Sub(one, frac), factor

    y_low, y_high, ly, hy, wy = axis(y, height_f, height_i, in_grid_y)
    x_low, x_high, lx, hx, wx = axis(x, width_f, width_i, in_grid_x)
    wy = op.Div(wy, count)
    hy, ly, hx, lx = op.Mul(hy, wy), op.Mul(ly, wy), op.Mul(hx, wx), op.Mul(lx, wx)

    channels = op.Shape(input, start=1, end=2)
    table = op.Reshape(op.Transpose(input, perm=[0, 2, 3, 1]), op.Concat(ints([-1]), channels, axis=0))
    batch = op.Cast(column(0), to=INT64.dtype)
    image_base = op.Mul(batch, op.Mul(height_i, width_i))
    row_low = op.Add(image_base, op.Mul(y_low, width_i))
    row_high = op.Add(image_base, op.Mul(y_high, width_i))

    rois_count = op.Shape(rois, start=0, end=1)
    flat = op.Concat(rois_count, ints([bins]), samples, axis=0)  # (K, bins, samples)
    weights_shape = op.Concat(rois_count, ints([bins, 1]), samples, axis=0)  # (K, bins, 1, samples)
    pooled = None
    # One corner at a time: each gathers (K, bins, samples, C) rows and reduces them at once (MatMul),
    # so the peak memory is one corner's samples, not four.
    for row, col, wgt_y, wgt_x in (
        (row_low, x_low, hy, hx),
        (row_low, x_high, hy, lx),
        (row_high, x_low, ly, hx),
        (row_high, x_high, ly, lx),
    ):
        index = op.Reshape(op.Add(row, col), flat)
        weight = op.Reshape(op.Mul(wgt_y, wgt_x), weights_shape)
        corner = op.MatMul(weight, op.Gather(table, index, axis=0))  # (K, bins, 1, C)
        pooled = corner if pooled is None else op.Add(pooled, corner)
    out_shape = op.Concat(rois_count, ints([out_h, out_w]), channels, axis=0)
    return op.Transpose(op.Reshape(pooled, out_shape), perm=[0, 3, 1, 2])


def translation_table() -> Dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: dcn's ops -> ONNX."""
    return {
        torch.ops.dcn.deform_conv2d.default: deform_conv2d_to_onnx,
        torch.ops.dcn.deform_roi_pool.default: deform_roi_pool_to_onnx,
    }


# --------------------------------------------------------------------------------------
# The TorchScript exporter (torch.onnx.export(..., dynamo=False))
# --------------------------------------------------------------------------------------
def _deform_conv2d_symbolic(
    g, input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups, backend
):
    from torch.onnx import symbolic_helper as sh
    from torch.onnx._internal.torchscript_exporter import _type_utils

    stride, padding, dilation = (sh._maybe_get_const(v, "is") for v in (stride, padding, dilation))
    groups, offset_groups = sh._maybe_get_const(groups, "i"), sh._maybe_get_const(offset_groups, "i")
    inputs = [input, weight, offset]
    sizes = sh._get_tensor_sizes(weight)
    has_mask = not sh._is_none(mask)
    if not sh._is_none(bias):
        inputs.append(bias)
    elif has_mask:  # the mask is DeformConv's 5th input: B, the 4th, must then be given (zeros)
        dtype = _type_utils.JitScalarType.from_value(input).dtype()
        inputs.append(g.op("Constant", value_t=torch.zeros(sizes[0], dtype=dtype)))
    if has_mask:
        inputs.append(mask)
    known = sizes and len(sizes) == 4 and None not in sizes[2:]
    attributes = _deform_conv_attributes(
        stride, padding, dilation, groups, offset_groups, list(sizes[2:]) if known else None
    )
    # The TorchScript exporter's g.op spells an attribute's type in its name: "_i" for ints and int lists.
    return g.op("DeformConv", *inputs, **{f"{name}_i": value for name, value in attributes.items()})


def _deform_conv2d_symbolic_old_opset(g, *args):
    raise _opset_error(g.opset, "dcn::deform_conv2d")


def _deform_roi_pool_symbolic(g, *args):
    raise ONNXExportError(
        "dcn::deform_roi_pool has no ONNX operator, and its decomposition into standard ONNX operators is "
        "written for torch's default exporter only: use torch.onnx.export(..., dynamo=True, "
        "custom_translation_table=dcn.ops.onnx.translation_table()) or dcn.ops.onnx.export_onnx(...). "
        "A detector can be trained with task.roi_pool=align (RoIAlign) instead."
    )


def register_symbolics() -> None:
    """Register dcn's ops with the TorchScript exporter (idempotent; done when this module is imported)."""
    from torch.onnx import register_custom_op_symbolic

    # A symbolic registered at opset v serves every opset >= v up to the next registration.
    register_custom_op_symbolic("dcn::deform_conv2d", _deform_conv2d_symbolic_old_opset, 7)
    register_custom_op_symbolic("dcn::deform_conv2d", _deform_conv2d_symbolic, MIN_OPSET)
    register_custom_op_symbolic("dcn::deform_roi_pool", _deform_roi_pool_symbolic, 7)


register_symbolics()


# --------------------------------------------------------------------------------------
# One call
# --------------------------------------------------------------------------------------
def export_onnx(
    model: nn.Module,
    args: Tuple[Any, ...],
    f: Union[str, os.PathLike, None] = None,
    *,
    opset_version: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
    dynamo: bool = True,
    external_data: bool = False,
    **export_options: Any,
):
    """``torch.onnx.export`` with dcn's translations, a checked opset and an optional dynamic batch.

    Args:
        model: the model (put in eval mode by the caller; a training-mode model exports its training
            behaviour, e.g. BatchNorm with batch statistics).
        args: example inputs, a tuple of tensors.
        f: where to write the ``.onnx`` file (one file: weights inside it unless ``external_data``);
            None writes nothing (dynamo: the returned ``ONNXProgram`` can be saved later).
        opset_version: the ONNX opset, >= 19 (DeformConv).
        dynamic_batch: make dim 0 of every input (and output) a shared dynamic ``batch`` dimension.
        input_names, output_names: names in the ONNX graph (default: torch's).
        dynamo: True for torch's default exporter (the ``torch.export`` one), False for the
            TorchScript one (deprecated by torch; ``deform_roi_pool`` is refused there).
        external_data: write the weights to a ``<f>.data`` file next to the model (needed above 2 GB).
        export_options: passed to ``torch.onnx.export`` (e.g. ``dynamic_shapes`` for other dims).

    Returns:
        The ``torch.onnx.ONNXProgram`` (dynamo) or None (TorchScript).

    Raises:
        ONNXExportError: opset below 19, or an op the chosen exporter cannot write (named with why).
    """
    _require_opset(opset_version, "dcn's deformable convolution")
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if dynamo:
        if dynamic_batch and "dynamic_shapes" not in export_options:
            batch = torch.export.Dim("batch")
            export_options["dynamic_shapes"] = tuple(
                {0: batch} if isinstance(a, torch.Tensor) else None for a in args
            )
        with warnings.catch_warnings():
            # torch names a shared dynamic dimension once and says so for every other input using it.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
            program = torch.onnx.export(
                model,
                tuple(args),
                dynamo=True,
                opset_version=opset_version,
                input_names=input_names,
                output_names=output_names,
                custom_translation_table=translation_table(),
                verbose=export_options.pop("verbose", False),
                **export_options,
            )
        if f is not None:
            program.save(f, external_data=external_data)
        return program
    input_names = list(input_names or [f"input_{i}" for i in range(len(tensors))])
    if dynamic_batch and "dynamic_axes" not in export_options:
        names = input_names + list(output_names or [])
        export_options["dynamic_axes"] = {name: {0: "batch"} for name in names}
    if f is None:
        raise ValueError("the TorchScript exporter (dynamo=False) needs a file name f")
    with warnings.catch_warnings():
        # dcn's argument checks compare shapes in Python; the traced shapes are the example's, as meant.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            tuple(args),
            f,
            dynamo=False,
            opset_version=opset_version,
            input_names=input_names,
            output_names=output_names,
            **export_options,
        )
    return None
