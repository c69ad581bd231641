"""Backend selection shared by dcn's ops: which implementation runs a call.

Every op has a PyTorch implementation (``dcn.ops._torch_<op>``, any device) and CUDA kernels run
through CuPy (``dcn.ops._cupy_<op>``). ``backend="auto"`` picks the CuPy kernels for CUDA tensors
when they can run and agree with the PyTorch path on that device (a quick self-check, once per
process and device), else PyTorch; ``"torch"`` and ``"cupy"`` force one (``"cupy"`` fails with the
reason and the install command when it cannot run).
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "backward_route",
    "composite_gradients",
    "BACKENDS",
    "OPS",
    "cupy_unavailable_reason",
    "self_check_failure",
    "resolve_backend",
    "implementation",
]

BACKENDS = ("auto", "torch", "cupy")

# op name -> (PyTorch module, CuPy module)
OPS = {
    "deform_conv2d": ("dcn.ops._torch_deform_conv", "dcn.ops._cupy_deform_conv"),
    "deform_roi_pool": ("dcn.ops._torch_deform_roi_pool", "dcn.ops._cupy_deform_roi_pool"),
}


# A constant to the compiler: torch.compile evaluates it once while tracing instead of tracing the
# import machinery inside it (which would break a fullgraph compile on CUDA inputs).
@torch.compiler.assume_constant_result
def cupy_unavailable_reason(op: str = "deform_conv2d") -> Optional[str]:
    """Why ``op``'s CuPy kernels cannot run here (e.g. "CuPy is not installed"); None when they can."""
    try:
        module = importlib.import_module(OPS[op][1])
    except ImportError as exc:
        return f"dcn's CuPy kernels for {op} failed to import ({exc})"
    return module.unavailable_reason()


# (op, CUDA device index) -> why the quick self-check failed there (None: it passed).
_self_check_verdicts: Dict[Tuple[str, int], Optional[str]] = {}


@torch.compiler.assume_constant_result
def self_check_failure(op: str, device_index: int) -> Optional[str]:
    """Why ``backend="auto"`` must not use ``op``'s CuPy kernels on CUDA device ``device_index``: the
    first disagreement of :func:`dcn.ops.check.quick_failure` with the PyTorch path, or the error the
    kernels raised. None when they agree. Computed once per process and device (a few milliseconds;
    ``DCN_SELF_CHECK=0`` skips it), and warned about once."""
    key = (op, device_index)
    if key in _self_check_verdicts:
        return _self_check_verdicts[key]
    if os.environ.get("DCN_SELF_CHECK", "1") == "0":
        return None
    if torch.cuda.is_current_stream_capturing():  # no kernel may run during a capture: decide later
        return None
    from dcn.ops import check  # noqa: PLC0415 (imports this module)

    reason = check.quick_failure(op, torch.device("cuda", device_index))
    _self_check_verdicts[key] = reason
    if reason is not None:
        warnings.warn(
            f"dcn: the CUDA kernels of {op} disagree with the PyTorch path on cuda:{device_index} "
            f"({reason}); backend='auto' uses the PyTorch path on this device. Please report it with the "
            f"output of `python -m dcn.ops.check --device cuda:{device_index}`.",
            RuntimeWarning,
            stacklevel=2,
        )
    return reason


def resolve_backend(backend: str, device: torch.device, op: str = "deform_conv2d") -> str:
    """The backend ("torch" or "cupy") that runs ``op`` on ``device`` for the requested ``backend``.

    ``"auto"`` picks the CuPy kernels for CUDA tensors when CuPy can run them and the quick self-check
    (:func:`self_check_failure`) passed on that device; ``"cupy"`` is used as asked.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type != "cuda" or cupy_unavailable_reason(op) is not None:
            return "torch"
        index = device.index if device.index is not None else torch.cuda.current_device()
        return "torch" if self_check_failure(op, index) is not None else "cupy"
    if backend == "cupy":
        reason = cupy_unavailable_reason(op)
        if reason is not None:
            raise RuntimeError(
                f"backend='cupy' is not available for {op}: {reason}. Install CuPy for your CUDA "
                "version, e.g. `pip install -e .[cuda13]` (or `.[cuda12]`), on a machine with an NVIDIA "
                "GPU; or use backend='torch'."
            )
        if device.type != "cuda":
            raise ValueError(f"backend='cupy' needs CUDA tensors, got tensors on {device}")
    return backend


def implementation(op: str, backend: str) -> ModuleType:
    """The module implementing ``op`` for a resolved ``backend`` ("torch" or "cupy")."""
    return importlib.import_module(OPS[op][backend == "cupy"])


# --------------------------------------------------------------------------------------
# Which backward computes the gradients
# --------------------------------------------------------------------------------------
def backward_route(device_type: str, deterministic: bool, create_graph: bool) -> str:
    """``"fused"`` (the backend's backward op) or ``"composite"`` (autograd over the op recomposed from
    differentiable PyTorch operations, ``dcn.ops._composite_<op>``).

    The composite route serves when the gradients must be differentiable again (``create_graph``), and
    under ``torch.use_deterministic_algorithms(True)`` on any device but the CPU: the CUDA kernels
    scatter with float ``atomicAdd`` and the PyTorch path's ``grid_sampler_2d_backward`` has no
    deterministic CUDA version, whereas the composite ops' ``gather`` / ``index_select`` backward is
    deterministic there. The CPU kernels are deterministic already (each thread owns what it writes).
    """
    if create_graph or (deterministic and device_type != "cpu"):
        return "composite"
    return "fused"


def composite_gradients(
    forward: Callable[..., torch.Tensor],
    inputs: Sequence[Optional[torch.Tensor]],
    needs: Sequence[bool],
    grad_out: torch.Tensor,
    create_graph: bool,
) -> List[Optional[torch.Tensor]]:
    """Gradients of ``forward(*inputs)`` for the inputs marked in ``needs`` (None for the others), by
    autograd; differentiable again when ``create_graph``. A wanted input that the output does not
    depend on gets zeros."""
    if not create_graph:  # fresh leaves: autograd then stops here instead of walking the caller's graph
        inputs = [
            t.detach().requires_grad_(bool(need)) if t is not None else None for t, need in zip(inputs, needs)
        ]
    with torch.enable_grad():
        out = forward(*inputs)
        wanted = [t for t, need in zip(inputs, needs) if need]
        found = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=create_graph, allow_unused=True))
    grads = []
    for t, need in zip(inputs, needs):
        g = next(found) if need else None
        grads.append(torch.zeros_like(t) if need and g is None else g)
    return grads
