"""dcn.ops.onnx: deform_conv2d exported as ONNX DeformConv and deform_roi_pool as a decomposition, both
run in ONNX Runtime against the PyTorch op (every configuration, far-outside and integer sample
positions, dynamic batch), and the clear refusals (opset < 19, roi pooling under the TorchScript exporter)."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from dcn.ops import (  # noqa: E402
    DeformConv2d,
    DeformConv2dPack,
    DeformRoIPoolPack,
    ModulatedDeformConv2dPack,
    deform_conv2d,
    deform_roi_pool,
)
from dcn.ops.onnx import MIN_OPSET, ONNXExportError, export_onnx, translation_table  # noqa: E402


def _out_size(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


class _Conv(nn.Module):
    """deform_conv2d with its weight and bias as parameters: forward(input, offset[, mask])."""

    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, groups, bias, generator):
        super().__init__()
        self.conf = (stride, padding, dilation)
        self.weight = nn.Parameter(torch.randn(c_out, c_in // groups, *kernel, generator=generator) * 0.3)
        self.bias = nn.Parameter(torch.randn(c_out, generator=generator)) if bias else None

    def forward(self, input, offset, mask=None):
        return deform_conv2d(input, offset, self.weight, self.bias, *self.conf, mask=mask)


def _offsets(shape, hw, padding, generator, dtype):
    """Offsets whose sample positions mix fractional, integer and half-integer positions, points far
    outside the image (+-50 and +-1e4) and, at output (0, 0), kernel point 0, the border lines y = H and
    x = -1 exactly (that point's regular position is (-padding_h, -padding_w))."""
    n, c, h_out, w_out = shape
    frac = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * 3
    grid = torch.randint(-8, 9, shape, generator=generator).double() / 2
    far = torch.where(torch.rand(shape, generator=generator) < 0.5, 50.25, -1e4)
    kind = torch.randint(0, 8, shape, generator=generator)
    offset = torch.where(kind < 4, frac, torch.where(kind < 7, grid, far))
    offset[:, 0, 0, 0] = float(hw[0] + padding[0])
    offset[:, 1, 0, 0] = float(padding[1] - 1)
    return offset.to(dtype)


def _conv_case(
    n, c_in, c_out, hw, kernel, stride, padding, dilation, groups, offset_groups, mask, bias, dtype, seed=0
):
    g = torch.Generator().manual_seed(seed)
    h_out = _out_size(hw[0], kernel[0], stride[0], padding[0], dilation[0])
    w_out = _out_size(hw[1], kernel[1], stride[1], padding[1], dilation[1])
    k = kernel[0] * kernel[1]
    module = _Conv(c_in, c_out, kernel, stride, padding, dilation, groups, bias, g).to(dtype).eval()
    x = torch.randn(n, c_in, *hw, generator=g).to(dtype)
    offset = _offsets((n, 2 * offset_groups * k, h_out, w_out), hw, padding, g, dtype)
    m = torch.rand(n, offset_groups * k, h_out, w_out, generator=g).to(dtype) if mask else None
    return module, (x, offset) + ((m,) if mask else ())


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, args):
    feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    return [torch.from_numpy(y) for y in session.run(None, feed)]


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


# (kernel, stride, padding, dilation, groups, offset_groups, mask, bias)
CONV_CASES = [
    ((3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False, True),
    ((3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True),
    ((3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, False),  # optional B left out before the mask
    ((3, 3), (1, 1), (0, 0), (1, 1), 1, 1, False, False),
    (
        (3, 2),
        (2, 1),
        (1, 0),
        (1, 2),
        1,
        2,
        True,
        True,
    ),  # non-square kernel, stride, dilation, asymmetric pads
    ((1, 3), (1, 2), (0, 2), (3, 1), 2, 1, False, True),
    ((3, 3), (2, 2), (2, 2), (2, 2), 2, 2, True, True),  # conv groups = offset groups
    ((3, 3), (1, 1), (1, 1), (1, 1), 4, 2, True, True),  # conv groups finer than offset groups
    ((3, 3), (1, 1), (1, 1), (1, 1), 2, 4, False, True),  # offset groups finer than conv groups
    ((2, 2), (1, 1), (1, 1), (1, 1), 8, 8, True, True),  # depthwise
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
def test_deform_conv2d_matches_in_onnx_runtime(tmp_path, case, dtype):
    kernel, stride, padding, dilation, groups, offset_groups, mask, bias = case
    module, args = _conv_case(
        3, 8, 8, (7, 9), kernel, stride, padding, dilation, groups, offset_groups, mask, bias, dtype
    )
    path = tmp_path / "conv.onnx"
    export_onnx(module, args, path, dynamic_batch=True)

    graph = onnx.load(str(path)).graph
    (node,) = [n for n in graph.node if n.op_type == "DeformConv"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes["group"] == groups and attributes["offset_group"] == offset_groups
    assert list(attributes["pads"]) == [
        padding[0],
        padding[1],
        padding[0],
        padding[1],
    ]  # top, left, bottom, right
    assert list(attributes["strides"]) == list(stride) and list(attributes["dilations"]) == list(dilation)
    assert list(attributes["kernel_shape"]) == list(kernel)

    session = _session(path)
    for batch in (3, 1, 5):  # the export's batch, and others: the batch dimension is dynamic
        inputs = [torch.cat([a] * 2)[:batch] for a in args]
        (got,) = _run(session, inputs)
        with torch.no_grad():
            expected = module(*inputs)
        torch.testing.assert_close(got, expected, **_tol(dtype))


def test_far_outside_and_border_samples_read_zero_as_in_pytorch(tmp_path):
    """Every sample outside (-1, H) x (-1, W), at +-inf, or exactly on the lines -1 and H: the output
    is the bias alone, in both runtimes."""
    module, (x, offset) = _conv_case(
        2, 4, 4, (5, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False, True, torch.float64
    )
    path = tmp_path / "conv.onnx"
    export_onnx(module, (x, offset), path)
    session = _session(path)
    bias = module.bias.detach().view(1, -1, 1, 1).expand(2, -1, 5, 6)
    for value in (1e4, -1e4, 1e30, float("inf"), float("-inf")):
        far = torch.full_like(offset, value)
        (got,) = _run(session, (x, far))
        torch.testing.assert_close(got, bias)
        torch.testing.assert_close(module(x, far).detach(), bias)
    # Integer shifts: whole-pixel moves, including onto the border lines (y = -1 or H reads zero).
    for shift in range(-7, 8):
        shifted = torch.full_like(offset, float(shift))
        (got,) = _run(session, (x, shifted))
        torch.testing.assert_close(got, module(x, shifted).detach(), rtol=1e-12, atol=1e-12)


def test_a_static_export_keeps_its_batch_size(tmp_path):
    module, args = _conv_case(
        1, 4, 4, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, torch.float32
    )
    path = tmp_path / "static.onnx"
    export_onnx(module, args, path)
    session = _session(path)
    assert [d for d in session.get_inputs()[0].shape] == [1, 4, 5, 5]
    (got,) = _run(session, args)
    torch.testing.assert_close(got, module(*args).detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _run(session, [torch.cat([a, a]) for a in args])


@pytest.mark.parametrize("layer", ["DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack", "same"])
def test_layers_export_with_their_offset_predictors(tmp_path, layer):
    torch.manual_seed(0)
    if layer == "DeformConv2d":
        module = DeformConv2d(6, 4, (3, 2), stride=(1, 2), padding=(1, 0), groups=2)
        x = torch.randn(2, 6, 8, 9)
        args = (x, torch.randn(2, 2 * 3 * 6, 8, 4) * 2, torch.rand(2, 3 * 6, 8, 4))
    else:
        kind = ModulatedDeformConv2dPack if layer == "ModulatedDeformConv2dPack" else DeformConv2dPack
        # padding="same" with an even kernel pads one more pixel right/bottom, outside the op.
        module = kind(
            6, 4, 3 if layer != "same" else (2, 4), padding=1 if layer != "same" else "same", offset_groups=3
        )
        nn.init.normal_(module.conv_offset.weight, std=0.5)  # non-trivial offsets
        args = (torch.randn(2, 6, 8, 9),)
    module.eval()
    path = tmp_path / "layer.onnx"
    export_onnx(module, args, path, dynamic_batch=True)
    if layer == "same":
        assert "Pad" in [n.op_type for n in onnx.load(str(path)).graph.node]
    (got,) = _run(_session(path), [a[:1] for a in args])
    torch.testing.assert_close(got, module(*[a[:1] for a in args]).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask,bias", [(True, True), (True, False), (False, True), (False, False)])
def test_the_torchscript_exporter_writes_the_same_deform_conv(tmp_path, mask, bias):
    module, args = _conv_case(
        2, 4, 6, (6, 7), (3, 3), (1, 2), (1, 1), (1, 1), 2, 2, mask, bias, torch.float32
    )
    path = tmp_path / "ts.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of its TorchScript exporter
        export_onnx(
            module, args, path, dynamo=False, dynamic_batch=True, opset_version=MIN_OPSET, output_names=["y"]
        )
    assert "DeformConv" in [n.op_type for n in onnx.load(str(path)).graph.node]
    session = _session(path)
    for batch in (2, 1):
        inputs = [a[:batch] for a in args]
        (got,) = _run(session, inputs)
        torch.testing.assert_close(got, module(*inputs).detach(), rtol=1e-5, atol=1e-5)


def test_opsets_without_deform_conv_are_refused_with_the_reason(tmp_path):
    layer = DeformConv2dPack(4, 4, 3, padding=1).eval()
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ONNXExportError, match="opset >= 19.*targets opset 18"):
        export_onnx(layer, (x,), tmp_path / "a.onnx", opset_version=18)
    # Straight through torch.onnx.export with the translation table: the same message, as the cause.
    with pytest.raises(Exception) as caught:
        torch.onnx.export(
            layer,
            (x,),
            dynamo=True,
            opset_version=18,
            custom_translation_table=translation_table(),
            verbose=False,
        )
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("needs opset >= 19" in message for message in chain)
    with warnings.catch_warnings(), pytest.raises(ONNXExportError, match="opset >= 19.*targets opset 17"):
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (x,), str(tmp_path / "b.onnx"), dynamo=False, opset_version=17)


# --------------------------------------------------------------------------------------
# deform_roi_pool: a decomposition into standard ONNX operators
# --------------------------------------------------------------------------------------
class _Pool(nn.Module):
    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned, with_offset=True):
        super().__init__()
        self.args = (output_size, spatial_scale, sampling_ratio, 0.1)
        self.aligned = aligned
        self.with_offset = with_offset

    def forward(self, input, rois, offset):
        return deform_roi_pool(
            input, rois, offset if self.with_offset else None, *self.args, aligned=self.aligned
        )


def _rois(dtype):
    """Boxes inside, across the border, far outside, degenerate (x2 < x1), tiny, large, on image 1 and 0."""
    return torch.tensor(
        [
            [0, 1.0, 2.0, 15.0, 17.0],
            [1, -5.0, -3.0, 30.0, 8.0],
            [1, 3.0, 3.0, 3.5, 3.2],
            [0, 20.0, 20.0, 10.0, 10.0],
            [1, -60.0, -40.0, -30.0, -20.0],
            [0, 0.0, 0.0, 23.0, 19.0],
            [1, 7.3, 1.1, 40.7, 35.9],
        ],
        dtype=dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "sampling_ratio,aligned,with_offset", list(itertools.product([2, 0], [True, False], [True, False]))
)
def test_deform_roi_pool_decomposition_matches_in_onnx_runtime(
    tmp_path, dtype, sampling_ratio, aligned, with_offset
):
    g = torch.Generator().manual_seed(0)
    module = _Pool((3, 4), 0.5, sampling_ratio, aligned, with_offset).eval()
    x = torch.randn(2, 5, 10, 12, generator=g, dtype=dtype)
    rois = _rois(dtype)
    offset = (torch.randn(len(rois), 2, 3, 4, generator=g) * 1.5).to(dtype)
    offset[0, :, 0, 0] = 40.0  # a bin moved far outside: zero
    path = tmp_path / "pool.onnx"
    dims = torch.export.Dim("images"), torch.export.Dim("rois")
    export_onnx(module, (x, rois, offset), path, dynamic_shapes=({0: dims[0]}, {0: dims[1]}, {0: dims[1]}))
    assert not {"DeformConv", "GridSample"} & {n.op_type for n in onnx.load(str(path)).graph.node}
    session = _session(path)
    for keep in (slice(None), slice(2, 3), slice(0, 0)):  # all RoIs, one, none
        inputs = (x, rois[keep], offset[keep])
        (got,) = _run(session, inputs)
        torch.testing.assert_close(got, module(*inputs), **_tol(dtype))
    # One image: the batch dimension is free too.
    one = rois[rois[:, 0] == 0]
    inputs = (x[:1], one, offset[: len(one)])
    (got,) = _run(session, inputs)
    torch.testing.assert_close(got, module(*inputs), **_tol(dtype))


def test_deform_roi_pool_nan_offsets_make_the_same_bins_nan(tmp_path):
    module = _Pool(2, 1.0, 2, True).eval()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [0, 1.0, 1.0, 5.0, 3.0]], dtype=torch.float64)
    offset = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    offset[1, 0, 1, 0] = float("nan")
    path = tmp_path / "pool.onnx"
    export_onnx(module, (x, rois, offset), path)
    (got,) = _run(_session(path), (x, rois, offset))
    expected = module(x, rois, offset)
    assert torch.equal(got.isnan(), expected.isnan()) and expected.isnan().any()
    torch.testing.assert_close(got, expected, equal_nan=True)


def test_deform_roi_pool_pack_exports_with_its_offset_head(tmp_path):
    torch.manual_seed(0)
    module = DeformRoIPoolPack(5, (3, 3), 0.5, sampling_ratio=2, hidden_channels=16, modulated=True).eval()
    nn.init.normal_(module.offset_head.fc[-1].weight, std=0.1)  # non-zero offsets and masks
    x = torch.randn(2, 5, 10, 12)
    rois = _rois(torch.float32)
    path = tmp_path / "pack.onnx"
    export_onnx(
        module, (x, rois), path, dynamic_shapes=({0: torch.export.Dim("n")}, {0: torch.export.Dim("k")})
    )
    (got,) = _run(_session(path), (x, rois[:3]))
    torch.testing.assert_close(got, module(x, rois[:3]).detach(), rtol=1e-5, atol=1e-5)


def test_the_torchscript_exporter_refuses_roi_pooling_and_names_the_way_that_works(tmp_path):
    module = _Pool(2, 1.0, 2, True).eval()
    args = (torch.randn(1, 3, 6, 6), torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]]), torch.zeros(1, 2, 2, 2))
    with warnings.catch_warnings(), pytest.raises(ONNXExportError, match="dynamo=True.*task.roi_pool=align"):
        warnings.simplefilter("ignore")
        export_onnx(module, args, tmp_path / "pool.onnx", dynamo=False, opset_version=MIN_OPSET)
