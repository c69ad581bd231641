"""Plumbing between PyTorch tensors and dcn's CUDA kernels run by CuPy.

Shared by every CuPy-backed op (deformable convolution, later deformable RoI pooling):

* :class:`KernelSource` — a ``.cu`` file of ``src/dcn/ops/cuda`` with the kernel templates it
  defines; it knows the full source text, the NVRTC options and every ``name_expression``
  (one instantiation per supported dtype). The NVRTC and host-compiler checks of the test suite
  use the same object, so they check exactly what runs on the GPU.
* :func:`unavailable_reason` — why the CuPy path cannot run here (never raises).
* :func:`cupy_launcher` — a ``launch(kernel, dtype, grid, block, args)`` callable for one CUDA
  device: the module is compiled once per device (CuPy also caches the binary on disk), kernels
  run on ``torch.cuda.current_stream()`` and tensors are passed as raw device pointers, so no
  copy and no host synchronisation happen.

CuPy is imported lazily: importing this module works without it.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "CUDA_SOURCE_DIR",
    "CTYPES",
    "KernelArg",
    "KernelSource",
    "Launch",
    "cupy_launcher",
    "kernel_argument",
    "unavailable_reason",
]

CUDA_SOURCE_DIR = Path(__file__).resolve().parent / "cuda"

# C++ element type of each supported tensor dtype, as spelled in the kernels' template arguments
# (common.cuh defines the 16-bit storage types).
CTYPES: Dict[torch.dtype, str] = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "dcn::half_t",
    torch.bfloat16: "dcn::bfloat16_t",
}

KernelArg = Union[Tensor, int, None]
Dim3 = Tuple[int, int, int]
#: ``launch(kernel_name, dtype, grid, block, args)``: runs ``dcn::<kernel_name><ctype(dtype)>``.
Launch = Callable[[str, torch.dtype, Dim3, Dim3, Sequence[KernelArg]], None]


@dataclass(frozen=True)
class KernelSource:
    """A ``.cu`` file under ``src/dcn/ops/cuda`` and the kernel templates it defines.

    Every kernel is a template ``dcn::<name><T>`` over the element types of :data:`CTYPES`.
    """

    filename: str
    kernels: Tuple[str, ...]

    @property
    def path(self) -> Path:
        return CUDA_SOURCE_DIR / self.filename

    def code(self) -> str:
        return self.path.read_text()

    def digest(self) -> str:
        """Hash of this file and the shared headers it may include.

        CuPy's on-disk kernel cache is keyed by the source text and options only, so the header
        contents enter the options through this digest: editing a header recompiles.
        """
        h = hashlib.sha256()
        for p in [self.path, *sorted(CUDA_SOURCE_DIR.glob("*.cuh"))]:
            h.update(p.name.encode())
            h.update(p.read_bytes())
        return h.hexdigest()[:16]

    def options(self) -> Tuple[str, ...]:
        """NVRTC options (the target architecture is added by the caller)."""
        return (f"-I{CUDA_SOURCE_DIR}", f"-DDCN_SOURCE_DIGEST=0x{self.digest()}")

    @staticmethod
    def name_expression(kernel: str, dtype: torch.dtype) -> str:
        try:
            ctype = CTYPES[dtype]
        except KeyError:
            raise TypeError(
                f"dcn's CUDA kernels support {', '.join(map(str, CTYPES))}; got {dtype}"
            ) from None
        return f"dcn::{kernel}<{ctype}>"

    def name_expressions(self) -> Tuple[str, ...]:
        return tuple(self.name_expression(k, d) for k in self.kernels for d in CTYPES)


def kernel_argument(arg: KernelArg) -> int:
    """A kernel argument as the 64-bit integer the kernel receives.

    Tensors become their device address (``data_ptr()``, which includes the storage offset of
    a slice), ``None`` the null pointer, ints a ``long long``. Every kernel parameter of dcn is
    a pointer or an ``index_t`` (``long long``), so each argument is exactly 8 bytes.
    """
    if isinstance(arg, Tensor):
        if not arg.is_contiguous():
            raise ValueError("kernel tensor arguments must be contiguous")
        return arg.data_ptr()
    if arg is None:
        return 0
    if isinstance(arg, bool) or not isinstance(arg, int):
        raise TypeError(f"kernel arguments are tensors, None or int; got {type(arg).__name__}")
    return arg


# --------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------
def _import_cupy() -> ModuleType:
    import cupy  # noqa: PLC0415 (optional dependency, imported on first use)

    return cupy


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> Optional[str]:
    """None when CuPy imports and sees a CUDA device; otherwise a short reason. Never raises."""
    try:
        cupy = _import_cupy()
    except ImportError:
        return "CuPy is not installed"
    except Exception as exc:  # a broken CuPy install (e.g. CUDA library mismatch) raises others
        return f"CuPy failed to import ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy cannot query CUDA devices ({type(exc).__name__}: {exc})"
    if count == 0:
        return "no CUDA device visible to CuPy"
    return None


# --------------------------------------------------------------------------------------
# Kernel cache and launch
# --------------------------------------------------------------------------------------
_lock = threading.Lock()
_modules: Dict[Tuple[str, int], object] = {}
_functions: Dict[Tuple[str, int, str], object] = {}
_streams: Dict[Tuple[int, int], object] = {}


def _function(source: KernelSource, device_index: int, name_expression: str):
    key = (source.filename, device_index, name_expression)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    cupy = _import_cupy()
    with _lock, cupy.cuda.Device(device_index):
        module = _modules.get((source.filename, device_index))
        if module is None:
            # CuPy adds -arch for this device; the module compiles on first get_function.
            module = cupy.RawModule(
                code=source.code(),
                options=source.options(),
                name_expressions=list(source.name_expressions()),
            )
            _modules[(source.filename, device_index)] = module
        fn = module.get_function(name_expression)
        _functions[key] = fn
    return fn


def _stream(device_index: int):
    """CuPy view of torch's current stream on the device (cached per raw stream handle)."""
    handle = torch.cuda.current_stream(device_index).cuda_stream
    key = (device_index, handle)
    stream = _streams.get(key)
    if stream is None:
        stream = _import_cupy().cuda.ExternalStream(handle, device_index)
        _streams[key] = stream
    return stream


def cupy_launcher(source: KernelSource, device: torch.device) -> Launch:
    """A :data:`Launch` that runs ``source``'s kernels with CuPy on ``device``'s current stream."""
    if device.type != "cuda":
        raise ValueError(f"CuPy kernels need CUDA tensors, got device {device}")
    index = device.index if device.index is not None else torch.cuda.current_device()

    def launch(kernel: str, dtype: torch.dtype, grid: Dim3, block: Dim3, args: Sequence[KernelArg]) -> None:
        fn = _function(source, index, source.name_expression(kernel, dtype))
        cupy = _import_cupy()
        with cupy.cuda.Device(index), _stream(index):
            fn(tuple(grid), tuple(block), tuple(kernel_argument(a) for a in args))

    return launch
