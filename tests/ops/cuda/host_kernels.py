"""Run dcn's CUDA kernels on the CPU: the same ``.cu`` source, compiled by the host C++ compiler.

:func:`build` compiles a :class:`~dcn.ops._cupy_runtime.KernelSource` together with
``shim/cuda_shim.h`` and a generated wrapper that exports one ``extern "C"`` launcher per kernel
instantiation (the source's own ``name_expressions``), into a shared library cached by content hash.
:class:`HostKernels` is then a :data:`~dcn.ops._cupy_runtime.Launch`: it checks the arguments
exactly as the CuPy launcher does (:meth:`~dcn.ops._cupy_runtime.KernelSource.check_arguments`, with
the CPU as the device), takes the grid and block computed by the op's own launch-configuration code
and runs every thread serially on CPU tensors' memory. Arguments travel exactly as with
``cuLaunchKernel``: an array of pointers to 8-byte values.

The library also reports each kernel's parameter types as the C++ compiler sees them
(:meth:`HostKernels.compiled_signature`), against which the tests check the launcher's reading of the
source (:meth:`~dcn.ops._cupy_runtime.KernelSource.signature`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from dcn.ops._cupy_runtime import CUDA_SOURCE_DIR, KernelArg, KernelSource, kernel_argument

SHIM_DIR = Path(__file__).resolve().parent / "shim"

# Extra host-only entry points: the 16-bit conversions of common.cuh, to test them directly, and the
# signature reporter behind HostKernels.compiled_signature.
_HOST_HELPERS = r"""
#include <type_traits>

extern "C" void dcn_shim_float_to_half(const float* x, unsigned short* y, long long n) {
  for (long long i = 0; i < n; ++i) y[i] = dcn::float_to_half(x[i]);
}
extern "C" void dcn_shim_half_to_float(const unsigned short* x, float* y, long long n) {
  for (long long i = 0; i < n; ++i) y[i] = dcn::half_to_float(x[i]);
}
extern "C" void dcn_shim_float_to_bfloat16(const float* x, unsigned short* y, long long n) {
  for (long long i = 0; i < n; ++i) y[i] = dcn::float_to_bfloat16(x[i]);
}
extern "C" void dcn_shim_bfloat16_to_float(const unsigned short* x, float* y, long long n) {
  for (long long i = 0; i < n; ++i) y[i] = dcn::bfloat16_to_float(x[i]);
}

// Parameter types of a kernel instantiated for T, one letter each (T element pointer, A accumulator
// pointer, I index_t pointer, i index_t, ? anything else), as the compiler sees them.
namespace dcn_shim {
template <typename T, typename P>
constexpr char parameter_kind() {
  typedef typename std::remove_cv<typename std::remove_pointer<P>::type>::type E;
  if (std::is_same<P, dcn::index_t>::value) return 'i';
  if (!std::is_pointer<P>::value) return '?';
  if (std::is_same<E, T>::value) return 'T';
  if (std::is_same<E, typename dcn::acc_type<T>::type>::value) return 'A';
  return std::is_same<E, dcn::index_t>::value ? 'I' : '?';
}
template <typename T, typename... Args>
void signature(void (*)(Args...), char* out) {
  const char kinds[] = {parameter_kind<T, Args>()..., '\0'};
  for (std::size_t i = 0; i < sizeof kinds; ++i) out[i] = kinds[i];
}
}  // namespace dcn_shim
"""


def compiler() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def wrapper_source(source: KernelSource) -> str:
    """C++ translation unit: the kernel source plus one exported launcher per instantiation."""
    lines = [f'#include "{source.filename}"', _HOST_HELPERS]
    for i, expr in enumerate(source.name_expressions()):
        lines.append(
            f'extern "C" void dcn_shim_kernel_{i}(const unsigned int* grid, const unsigned int* block,'
            f" void** params) {{ dcn_shim::launch(&{expr}, grid, block, params); }}"
        )
    # Signatures of the half instantiations, where T, acc_type<T>::type and index_t all differ.
    for kernel in source.kernels:
        expr = source.name_expression(kernel, torch.float16)
        lines.append(
            f'extern "C" void dcn_shim_signature_{kernel}(char* out) {{'
            f" dcn_shim::signature<dcn::half_t>(&{expr}, out); }}"
        )
    return "\n".join(lines) + "\n"


def build(source: KernelSource, cache_dir: Path, extra_flags: Sequence[str] = ()) -> Path:
    """Compile ``source`` for the host; returns the shared library (reused when unchanged)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no host C++ compiler found (set CXX or install g++)")
    wrapper = wrapper_source(source)
    flags = [
        "-std=c++17",
        "-O2",
        "-g0",
        "-fPIC",
        "-shared",
        "-Wall",
        "-Werror",
        "-include",
        str(SHIM_DIR / "cuda_shim.h"),
        f"-I{CUDA_SOURCE_DIR}",
        *extra_flags,
    ]
    key = hashlib.sha256(
        "\0".join([cxx, *flags, wrapper, source.digest(), (SHIM_DIR / "cuda_shim.h").read_text()]).encode()
    ).hexdigest()[:20]
    lib = cache_dir / f"{Path(source.filename).stem}-{key}.so"
    if lib.exists():
        return lib
    cache_dir.mkdir(parents=True, exist_ok=True)
    cpp = cache_dir / f"{Path(source.filename).stem}-{key}.cpp"
    cpp.write_text(wrapper)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run([cxx, *flags, str(cpp), "-o", str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"host compilation of {source.filename} failed:\n{proc.stderr}")
    os.replace(tmp, lib)  # atomic: concurrent test workers never load a half-written library
    return lib


class HostKernels:
    """A :data:`~dcn.ops._cupy_runtime.Launch` running kernels serially on CPU tensors."""

    def __init__(self, source: KernelSource, library: Path) -> None:
        self.source = source
        self.lib = ctypes.CDLL(str(library))
        self._index: Dict[str, int] = {e: i for i, e in enumerate(source.name_expressions())}
        self.launches: list[Tuple[str, Tuple[int, int, int], Tuple[int, int, int]]] = []

    def __call__(self, kernel: str, dtype: torch.dtype, grid, block, args: Sequence[KernelArg]) -> None:
        expr = self.source.name_expression(kernel, dtype)
        self.source.check_arguments(kernel, dtype, torch.device("cpu"), args)
        grid, block = tuple(int(g) for g in grid), tuple(int(b) for b in block)
        if len(grid) != 3 or len(block) != 3 or min(grid + block) < 1:
            raise ValueError(f"invalid launch geometry grid={grid} block={block}")
        if block[0] * block[1] * block[2] > 1024:  # CUDA's limit: the shim must not accept more
            raise ValueError(f"block {block} has more than 1024 threads")
        values = [ctypes.c_int64(kernel_argument(a)) for a in args]
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        g = (ctypes.c_uint * 3)(*grid)
        b = (ctypes.c_uint * 3)(*block)
        self.launches.append((expr, grid, block))
        getattr(self.lib, f"dcn_shim_kernel_{self._index[expr]}")(g, b, params)

    def compiled_signature(self, kernel: str) -> Tuple[str, ...]:
        """``kernel``'s parameter types as the C++ compiler sees them, spelled as
        :attr:`~dcn.ops._cupy_runtime.KernelParameter.ctype` ("?" for a type the launcher cannot check)."""
        letters = ctypes.create_string_buffer(256)
        getattr(self.lib, f"dcn_shim_signature_{kernel}")(letters)
        names = {"T": "T*", "A": "A*", "I": "index_t*", "i": "index_t"}
        return tuple(names.get(c, "?") for c in letters.value.decode())

    def convert(self, name: str, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """Run one of the ``dcn_shim_*`` conversion helpers elementwise on a contiguous CPU tensor."""
        x = x.contiguous()
        y = torch.empty(x.shape, dtype=out_dtype)
        getattr(self.lib, f"dcn_shim_{name}")(
            ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_int64(x.numel())
        )
        return y
