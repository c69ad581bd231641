"""Plumbing between PyTorch tensors and dcn's CUDA kernels run by CuPy.

Shared by every CuPy-backed op (deformable convolution, deformable RoI pooling):

* :class:`KernelSource` — a ``.cu`` file of ``src/dcn/ops/cuda`` with the kernel templates it
  defines; it knows the full source text, the NVRTC options, every ``name_expression`` (one
  instantiation per supported dtype) and each kernel's parameter list, read from the source
  (:meth:`KernelSource.signature`). The NVRTC and host-compiler checks of the test suite use the
  same object, so they check exactly what runs on the GPU.
* :meth:`KernelSource.check_arguments` — every launch's arguments against the kernel's parameter
  list: count, tensor or int, dtype (``T*`` the launch dtype, ``A*`` its accumulation type, float32
  for 16-bit types, ``index_t*`` int64) and device. A mismatch raises before the kernel reinterprets
  memory (a float32 buffer read as half is garbage, not an error). The CPU launcher of the test
  suite runs the same check.
* :func:`unavailable_reason` — why the CuPy path cannot run here (never raises): CuPy missing or
  broken, no device, CuPy built for another CUDA major than torch, or — given a
  :class:`KernelSource` — its module failing to compile or load on the current device.
* :func:`cupy_launcher` — a ``launch(kernel, dtype, grid, block, args)`` callable for one CUDA
  device: the module is compiled and all its kernel functions are loaded once per device when the
  launcher is first made (CuPy also caches the binary on disk), so no launch compiles, not even a
  first one inside a CUDA-graph capture; kernels run on ``torch.cuda.current_stream()`` and tensors
  are passed as raw device pointers, so no copy and no host synchronisation happen.

CuPy is imported lazily: importing this module works without it.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from dcn.ops._backend import compute_dtype

__all__ = [
    "CUDA_SOURCE_DIR",
    "CTYPES",
    "KernelArg",
    "KernelParameter",
    "KernelSource",
    "Launch",
    "cupy_launcher",
    "kernel_argument",
    "module_unavailable_reason",
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


# The parameter types dcn's kernels use, as written in the .cu sources (without const and
# __restrict__), and how the launcher checks them: "T*" a tensor of the launch dtype, "A*" a
# tensor of its accumulation type, "index_t*" an int64 tensor, "index_t" a Python int.
_PARAMETER_TYPES = {
    "T*": "T*",
    "typename acc_type<T>::type*": "A*",
    "index_t*": "index_t*",
    "index_t": "index_t",
}
_KERNEL_DECLARATION = re.compile(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)


@dataclass(frozen=True)
class KernelParameter:
    """One kernel parameter: its name in the source and its type, one of "T*" (the instantiated
    element type), "A*" (``acc_type<T>::type``), "index_t*" (int64) and "index_t"."""

    name: str
    ctype: str


def _parse_parameter(text: str, where: str) -> KernelParameter:
    words = re.findall(r"\*|[^\s*]+", re.sub(r"\b(?:const|__restrict__)\b", " ", text))
    if len(words) < 2:
        raise ValueError(f"{where}: cannot read parameter {text.strip()!r}")
    spelled = " ".join(words[:-1]).replace(" *", "*")
    ctype = _PARAMETER_TYPES.get(spelled)
    if ctype is None:
        raise ValueError(
            f"{where}: parameter {text.strip()!r} has type {spelled!r}; the launcher checks only "
            f"{', '.join(map(repr, _PARAMETER_TYPES))} (extend _PARAMETER_TYPES)"
        )
    return KernelParameter(words[-1], ctype)


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

    def signature(self, kernel: str) -> Tuple[KernelParameter, ...]:
        """The parameter list of ``kernel``, read from the ``__global__`` declaration in the source."""
        return _signatures(self.path, self.kernels)[kernel]

    def check_arguments(
        self, kernel: str, dtype: torch.dtype, device: torch.device, args: Sequence[KernelArg]
    ) -> None:
        """Raise unless ``args`` fit ``dcn::<kernel><ctype(dtype)>`` on ``device``.

        ``T*`` parameters take a tensor of ``dtype``, ``A*`` one of ``compute_dtype(dtype)``,
        ``index_t*`` an int64 tensor (any of them may be None, the null pointer), ``index_t`` an
        int. TypeError for a wrong count, kind or dtype; ValueError for a tensor on another device.
        """
        expr = self.name_expression(kernel, dtype)
        params = self.signature(kernel)
        if len(args) != len(params):
            raise TypeError(f"{expr} takes {len(params)} arguments, got {len(args)}")
        tensor_dtypes = {"T*": dtype, "A*": compute_dtype(dtype), "index_t*": torch.int64}
        for i, (param, arg) in enumerate(zip(params, args)):
            # Built only for an error message: this runs on every launch.
            where = lambda i=i, param=param: f"{expr} args[{i}] ({param.ctype} {param.name})"  # noqa: E731
            if param.ctype == "index_t":
                if isinstance(arg, bool) or not isinstance(arg, int):
                    raise TypeError(f"{where()} must be an int, got {type(arg).__name__}")
                continue
            if arg is None:
                continue
            if not isinstance(arg, Tensor):
                raise TypeError(f"{where()} must be a tensor or None, got {type(arg).__name__}")
            expected = tensor_dtypes[param.ctype]
            if arg.dtype != expected:
                raise TypeError(f"{where()} must have dtype {expected}, got {arg.dtype}")
            if arg.device != device:
                raise ValueError(f"{where()} must be on {device}, got a tensor on {arg.device}")


@functools.lru_cache(maxsize=None)
def _signatures(path: Path, kernels: Tuple[str, ...]) -> Dict[str, Tuple[KernelParameter, ...]]:
    code = _COMMENT.sub(" ", path.read_text())
    declared = {m.group(1): m.group(2) for m in _KERNEL_DECLARATION.finditer(code)}
    signatures = {}
    for kernel in kernels:
        if kernel not in declared:
            raise ValueError(f"{path.name} declares no __global__ kernel {kernel!r}")
        where = f"{path.name}: {kernel}"
        signatures[kernel] = tuple(_parse_parameter(p, where) for p in declared[kernel].split(","))
    return signatures


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


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (CuPy's compile errors carry the whole NVRTC log)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:limit] if lines else ''}"


def _cupy_unavailable_reason() -> Optional[str]:
    try:
        cupy = _import_cupy()
    except ImportError:
        return "CuPy is not installed"
    except Exception as exc:  # a broken CuPy install (e.g. CUDA library mismatch) raises others
        return f"CuPy failed to import ({_first_line(exc)})"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if torch.version.cuda is None:
        return "this torch is not built for CUDA (torch.version.cuda is None)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        cupy_major = cupy.cuda.runtime.runtimeGetVersion() // 1000  # e.g. 12080 -> 12
    except Exception as exc:
        return f"CuPy cannot query the CUDA runtime ({_first_line(exc)})"
    if count == 0:
        return "no CUDA device visible to CuPy"
    # Two CUDA runtimes of different majors in one process: CuPy's kernels and torch's tensors would
    # go through different runtime libraries; dcn supports only matching pairs.
    torch_major = int(torch.version.cuda.split(".")[0])
    if cupy_major != torch_major:
        return (
            f"CuPy is built for CUDA {cupy_major} but torch for CUDA {torch_major}: "
            f"pip install cupy-cuda{torch_major}x (dcn's extra: pip install -e .[cuda{torch_major}])"
        )
    return None


def module_unavailable_reason(source: KernelSource, device_index: int) -> Optional[str]:
    """None when ``source``'s module compiles and all its kernels load on the device (kept in the
    launcher's cache), else why not; never raises. Assumes :func:`unavailable_reason` is None."""
    try:
        _module_functions(source, device_index)
    except Exception as exc:  # NVRTC missing or failing, no kernel image for this GPU, ...
        return f"CuPy cannot compile or load {source.filename} on cuda:{device_index} ({_first_line(exc)})"
    return None


@functools.lru_cache(maxsize=None)
def unavailable_reason(source: Optional[KernelSource] = None) -> Optional[str]:
    """None when the CuPy kernels can run here, otherwise a short reason. Never raises; cached.

    Without ``source``: CuPy imports, sees a CUDA device and uses the CUDA major of torch. With
    ``source``: also its module compiles and loads on the current device (once per process; the
    launcher reuses it), so a CuPy that cannot load NVRTC reports here, not at the first forward.
    """
    reason = _cupy_unavailable_reason()
    if reason is None and source is not None:
        reason = module_unavailable_reason(source, torch.cuda.current_device())
    return reason


# --------------------------------------------------------------------------------------
# Kernel cache and launch
# --------------------------------------------------------------------------------------
_lock = threading.Lock()
# (filename, device index) -> {name_expression: CuPy kernel function}
_modules: Dict[Tuple[str, int], Dict[str, object]] = {}
_streams: Dict[Tuple[int, int], object] = {}


def _module_functions(source: KernelSource, device_index: int) -> Dict[str, object]:
    """Every kernel function of ``source`` on the device, compiled and loaded on first use."""
    key = (source.filename, device_index)
    functions = _modules.get(key)
    if functions is not None:
        return functions
    cupy = _import_cupy()
    with _lock, cupy.cuda.Device(device_index):
        functions = _modules.get(key)
        if functions is None:
            # CuPy adds -arch for this device. The module compiles and loads at the first
            # get_function; fetching them all now means no later launch compiles or loads
            # anything (a first launch may be inside a CUDA-graph capture).
            module = cupy.RawModule(
                code=source.code(),
                options=source.options(),
                name_expressions=list(source.name_expressions()),
            )
            functions = {expr: module.get_function(expr) for expr in source.name_expressions()}
            _modules[key] = functions
    return functions


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
    """A :data:`Launch` that runs ``source``'s kernels with CuPy on ``device``'s current stream.

    Builds the module on the device if needed (compiles and loads every kernel); each launch then
    checks its arguments (:meth:`KernelSource.check_arguments`) against this device.
    """
    if device.type != "cuda":
        raise ValueError(f"CuPy kernels need CUDA tensors, got device {device}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    device = torch.device("cuda", index)
    functions = _module_functions(source, index)

    def launch(kernel: str, dtype: torch.dtype, grid: Dim3, block: Dim3, args: Sequence[KernelArg]) -> None:
        source.check_arguments(kernel, dtype, device, args)
        fn = functions[source.name_expression(kernel, dtype)]
        cupy = _import_cupy()
        with cupy.cuda.Device(index), _stream(index):
            fn(tuple(grid), tuple(block), tuple(kernel_argument(a) for a in args))

    return launch
