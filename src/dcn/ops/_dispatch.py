"""Backend selection shared by dcn's ops: which implementation runs a call.

Every op has a PyTorch implementation (``dcn.ops._torch_<op>``, any device) and CUDA kernels run
through CuPy (``dcn.ops._cupy_<op>``). ``backend="auto"`` picks the CuPy kernels for CUDA tensors
when they can run, else PyTorch; ``"torch"`` and ``"cupy"`` force one (``"cupy"`` fails with the
reason and the install command when it cannot run).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

import torch

__all__ = ["BACKENDS", "OPS", "cupy_unavailable_reason", "resolve_backend", "implementation"]

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


def resolve_backend(backend: str, device: torch.device, op: str = "deform_conv2d") -> str:
    """The backend ("torch" or "cupy") that runs ``op`` on ``device`` for the requested ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cupy" if device.type == "cuda" and cupy_unavailable_reason(op) is None else "torch"
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
