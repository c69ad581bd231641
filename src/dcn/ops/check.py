"""Self-check: do dcn's CUDA kernels agree with the PyTorch path on this GPU?

    python -m dcn.ops.check                  # the current CUDA device
    python -m dcn.ops.check --device cuda:1

Runs both ops (:func:`dcn.ops.deform_conv2d`, :func:`dcn.ops.deform_roi_pool`) through the CuPy
kernels and through the PyTorch path on the same device, for a few configurations (conv groups,
offset groups, a modulation mask, samples far outside the image, adaptive RoI grids) in float32,
float64 and bfloat16, forward and every gradient, prints one row per configuration and exits 1 on a
mismatch (2 when there is nothing to check: no CUDA device or no CuPy).

The reference is the PyTorch path in float64 on inputs rounded to the checked dtype, so the tolerance
only has to cover the checked dtype's arithmetic. ``backend="auto"`` runs the quick version of this
check (:func:`quick_failure`: two float32 configurations per op, a few milliseconds) the first time it
would pick the CuPy kernels on a device, and falls back to the PyTorch path there if it fails.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from dcn.ops._backend import ConvInputs, ConvParams, PoolInputs, PoolParams, compute_dtype

__all__ = ["CONV_CASES", "ROI_CASES", "Row", "check", "quick_failure", "main"]

# Relative tolerance per checked dtype: errors are measured against max(1, |reference|) of each tensor.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@dataclass(frozen=True)
class ConvCase:
    """One deform_conv2d configuration: shapes, geometry, grouping, mask, offset spread."""

    name: str
    n: int = 2
    c_in: int = 8
    c_out: int = 8
    size: Tuple[int, int] = (9, 9)
    kernel: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    mask: bool = False
    spread: float = 2.0  # offsets ~ spread * N(0, 1); large values sample far outside the image


@dataclass(frozen=True)
class RoICase:
    """One deform_roi_pool configuration."""

    name: str
    output_size: Tuple[int, int] = (3, 3)
    spatial_scale: float = 0.5
    sampling_ratio: int = 2
    aligned: bool = True
    offset: bool = True


CONV_CASES = (
    ConvCase("3x3"),
    ConvCase(
        "groups, offset groups, mask",
        n=3,
        c_in=12,
        c_out=6,
        size=(10, 8),
        kernel=(3, 2),
        stride=(2, 1),
        padding=(1, 0),
        dilation=(2, 1),
        groups=3,
        offset_groups=2,
        mask=True,
    ),
    ConvCase("far outside", size=(7, 7), mask=True, spread=12.0),
)
ROI_CASES = (
    RoICase("fixed grid"),
    RoICase("adaptive grid, legacy alignment", sampling_ratio=0, aligned=False, output_size=(4, 3)),
    RoICase("no offset", offset=False),
)
QUICK_DTYPES = (torch.float32,)
FULL_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


@dataclass(frozen=True)
class Row:
    """The outcome of one (op, configuration, dtype): the worst error over the output and gradients."""

    op: str
    case: str
    dtype: torch.dtype
    worst: str  # which tensor had the largest error, e.g. "grad offset"
    error: float  # its error relative to max(1, |reference|)
    tolerance: float
    failure: Optional[str] = None  # an exception the candidate raised

    @property
    def ok(self) -> bool:
        return self.failure is None and self.error <= self.tolerance


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------
def _conv_inputs(
    case: ConvCase, device: torch.device, seed: int
) -> Tuple[List[Optional[Tensor]], ConvParams, Tensor]:
    """float64 tensors (input, offset, mask, weight, bias), the conv arguments and grad_out."""
    g = torch.Generator().manual_seed(seed)
    (H, W), (kh, kw) = case.size, case.kernel
    h_out = (H + 2 * case.padding[0] - case.dilation[0] * (kh - 1) - 1) // case.stride[0] + 1
    w_out = (W + 2 * case.padding[1] - case.dilation[1] * (kw - 1) - 1) // case.stride[1] + 1
    K, G = kh * kw, case.offset_groups
    f64 = dict(generator=g, dtype=torch.float64)
    x = torch.randn(case.n, case.c_in, H, W, **f64)
    # Fractional parts in [0.2, 0.8]: away from the integer points where bilinear sampling has kinks,
    # so a rounding difference cannot flip a position derivative.
    offset = torch.randn(case.n, 2 * G * K, h_out, w_out, **f64).mul_(case.spread).floor_()
    offset += 0.2 + 0.6 * torch.rand(offset.shape, **f64)
    mask = torch.rand(case.n, G * K, h_out, w_out, **f64) if case.mask else None
    weight = torch.randn(case.c_out, case.c_in // case.groups, kh, kw, **f64) / (case.c_in * K) ** 0.5
    bias = torch.randn(case.c_out, **f64)
    grad_out = torch.randn(case.n, case.c_out, h_out, w_out, **f64)
    conf = ConvParams(case.stride, case.padding, case.dilation, case.groups, case.offset_groups)
    tensors = [t.to(device) if t is not None else None for t in (x, offset, mask, weight, bias)]
    return tensors, conf, grad_out.to(device)


def _roi_inputs(
    case: RoICase, device: torch.device, seed: int
) -> Tuple[List[Optional[Tensor]], PoolParams, Tensor]:
    """float64 tensors (input, rois, offset), the pooling arguments and grad_out."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    x = torch.randn(2, 8, 16, 20, **f64)
    # Boxes in image coordinates (features are spatial_scale of the image): inside, partly outside,
    # tiny and one covering everything.
    rois = torch.tensor(
        [
            [0, 2.3, 3.1, 20.7, 18.2],
            [1, -6.0, 4.5, 14.2, 40.9],
            [0, 10.1, 10.4, 11.0, 11.3],
            [1, 0, 0, 39.5, 31.5],
        ],
        dtype=torch.float64,
    )
    out_h, out_w = case.output_size
    offset = 0.3 * torch.randn(rois.shape[0], 2, out_h, out_w, **f64) if case.offset else None
    grad_out = torch.randn(rois.shape[0], 8, out_h, out_w, **f64)
    conf = PoolParams(case.output_size, case.spatial_scale, case.sampling_ratio, 0.1, case.aligned)
    tensors = [t.to(device) if t is not None else None for t in (x, rois, offset)]
    return tensors, conf, grad_out.to(device)


# --------------------------------------------------------------------------------------
# Runs and comparison
# --------------------------------------------------------------------------------------
def _run_conv(impl: ModuleType, tensors: Sequence[Optional[Tensor]], conf: ConvParams, grad_out: Tensor):
    out = impl.deform_conv2d_forward(ConvInputs(*tensors), conf)
    grads = impl.deform_conv2d_backward(grad_out, ConvInputs(*tensors), conf, [True] * 5)
    names = ["output", "grad input", "grad offset", "grad mask", "grad weight", "grad bias"]
    return dict(zip(names, [out, *grads]))


def _run_roi(impl: ModuleType, tensors: Sequence[Optional[Tensor]], conf: PoolParams, grad_out: Tensor):
    out = impl.deform_roi_pool_forward(PoolInputs(*tensors), conf)
    grads = impl.deform_roi_pool_backward(grad_out, PoolInputs(*tensors), conf, [True, True])
    return dict(zip(["output", "grad input", "grad offset"], [out, *grads]))


def _cast_conv(tensors: Sequence[Optional[Tensor]], dtype: torch.dtype) -> List[Optional[Tensor]]:
    return [t.to(dtype) if t is not None else None for t in tensors]


def _cast_roi(tensors: Sequence[Optional[Tensor]], dtype: torch.dtype) -> List[Optional[Tensor]]:
    # As the public op passes them: features and offsets in the checked dtype, boxes in float32 at
    # least (a 16-bit box coordinate would move whole bins).
    x, rois, offset = tensors
    return [x.to(dtype), rois.to(compute_dtype(dtype)), offset.to(dtype) if offset is not None else None]


# op -> (cases, inputs(case, device, seed), run(impl, tensors, conf, grad_out), cast(tensors, dtype))
_OPS: Dict[str, tuple] = {
    "deform_conv2d": (CONV_CASES, _conv_inputs, _run_conv, _cast_conv),
    "deform_roi_pool": (ROI_CASES, _roi_inputs, _run_roi, _cast_roi),
}


@contextlib.contextmanager
def _plain_mode(device: torch.device):
    """No autograd, no autocast and no deterministic-mode errors while checking: the check may run
    from inside a user's op call (``backend="auto"``), under any of them."""
    deterministic, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(False)
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _compare(found: Dict[str, Optional[Tensor]], expected: Dict[str, Optional[Tensor]]) -> Tuple[str, float]:
    worst, error = "output", 0.0
    for name, ref in expected.items():
        got = found.get(name)
        if ref is None and got is None:
            continue
        if (ref is None) != (got is None) or tuple(got.shape) != tuple(ref.shape):
            return name, float("inf")
        ref64, got64 = ref.double(), got.double()
        if not torch.equal(torch.isnan(ref64), torch.isnan(got64)):
            return name, float("inf")
        diff = (got64 - ref64).nan_to_num(nan=0.0).abs().max().item() if ref.numel() else 0.0
        rel = diff / max(1.0, ref64.nan_to_num(nan=0.0).abs().max().item() if ref.numel() else 1.0)
        if rel > error:
            worst, error = name, rel
    return worst, error


def check(
    device: torch.device,
    ops: Sequence[str] = ("deform_conv2d", "deform_roi_pool"),
    dtypes: Sequence[torch.dtype] = FULL_DTYPES,
    *,
    quick: bool = False,
    candidate: Optional[Callable[[str], ModuleType]] = None,
    reference: Optional[Callable[[str], ModuleType]] = None,
) -> List[Row]:
    """Compare ``candidate(op)`` (default: the CuPy backend) with ``reference(op)`` (default: the
    PyTorch backend, run in float64) on ``device``; one :class:`Row` per (op, configuration, dtype).

    A backend here is a module with the interface of :mod:`dcn.ops._backend` (``deform_conv2d_forward`` /
    ``_backward``, ``deform_roi_pool_forward`` / ``_backward``). ``quick`` checks the first two
    configurations of each op only.
    """
    from dcn.ops._dispatch import implementation  # noqa: PLC0415 (the dispatcher imports this module)

    candidate = candidate or (lambda op: implementation(op, "cupy"))
    reference = reference or (lambda op: implementation(op, "torch"))
    rows = []
    with _plain_mode(device):
        for op in ops:
            cases, make_inputs, run, cast = _OPS[op]
            for seed, case in enumerate(cases[:2] if quick else cases):
                tensors, conf, grad_out = make_inputs(case, device, seed)
                for dtype in dtypes:
                    # The reference sees the candidate's inputs, rounded to the checked dtype, in float64.
                    inputs = cast(tensors, dtype)
                    rounded = [t.double() if t is not None else None for t in inputs]
                    expected = run(reference(op), rounded, conf, grad_out.to(dtype).double())
                    tol = TOLERANCE[dtype]
                    try:
                        found = run(candidate(op), inputs, conf, grad_out.to(dtype))
                    except Exception as exc:  # kernels that fail to compile or launch fail the check
                        failure = f"{type(exc).__name__}: {exc}"
                        rows.append(Row(op, case.name, dtype, "-", float("inf"), tol, failure))
                        continue
                    worst, error = _compare(found, expected)
                    rows.append(Row(op, case.name, dtype, worst, error, tol))
    return rows


def quick_failure(op: str, device: torch.device) -> Optional[str]:
    """Why ``op``'s CuPy kernels cannot be trusted on ``device`` (the first failing row of a quick
    float32 check, or the exception they raised); None when they agree with the PyTorch path."""
    try:
        rows = check(device, (op,), QUICK_DTYPES, quick=True)
    except Exception as exc:  # even building the reference failed: do not pick the kernels
        return f"the self-check could not run ({type(exc).__name__}: {exc})"
    for row in rows:
        if not row.ok:
            what = row.failure or f"{row.worst} off by {row.error:.1e} (tolerance {row.tolerance:.0e})"
            return f"{row.case}, {str(row.dtype).replace('torch.', '')}: {what}"
    return None


def format_rows(rows: Sequence[Row]) -> str:
    """A plain-text table, one row per (op, configuration, dtype)."""
    header = ("op", "configuration", "dtype", "worst tensor", "error", "tolerance", "")
    lines = [
        (
            r.op,
            r.case,
            str(r.dtype).replace("torch.", ""),
            r.worst,
            f"{r.error:.1e}",
            f"{r.tolerance:.0e}",
            "ok" if r.ok else ("FAILED" + (f" ({r.failure})" if r.failure else "")),
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dcn.ops.check",
        description="Compare dcn's CUDA kernels (CuPy) with its PyTorch path on a GPU: forward and all "
        "gradients, float32/float64/bfloat16. Exit 0: all agree; 1: a mismatch; 2: nothing to check.",
    )
    parser.add_argument(
        "--device", default="cuda", help="the CUDA device to check (default: the current one)"
    )
    args = parser.parse_args(argv)
    from dcn.ops._dispatch import cupy_unavailable_reason  # noqa: PLC0415

    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device: {exc}")
    if device.type != "cuda":
        parser.error(f"--device must be a CUDA device (the kernels checked are CUDA kernels), got {device}")
    reason = cupy_unavailable_reason()
    if reason is not None:
        print(f"dcn.ops.check: nothing to check: {reason}", file=sys.stderr)
        return 2
    if device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    print(f"dcn's CUDA kernels vs its PyTorch path on {device} ({torch.cuda.get_device_name(device)}):")
    rows = check(device)
    print(format_rows(rows))
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks agree.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
