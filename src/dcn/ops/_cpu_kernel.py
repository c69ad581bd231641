"""Just-in-time build of dcn's C++ CPU kernels (csrc/).

``deform_conv_cpu.cpp`` runs deformable convolution's forward and first-order backward: bilinear
sampling straight into the GEMM's column matrix, oneDNN GEMMs, one multithreaded pass for the
input scatter and the offset and mask gradients. ``deform_roi_pool_cpu.cpp`` runs deformable RoI
pooling; ``library.cpp`` registers both as the ``torch.ops.dcn_cpu`` ops (the schemas), with the
entry points declared in ``ops.h``. See the sources for the design. They are compiled once per
machine, for the vector instructions ATen itself uses there, with ``torch.utils.cpp_extension.load``
(cached under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), on first use.

Where they cannot be built (no C++ compiler, no ninja) or when ``DCN_CPU_KERNEL=0`` is set, the
PyTorch path runs on ATen operations (``embedding_bag``, ``grid_sampler_2d_backward``): same
results, slower.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = [_CSRC / name for name in ("deform_conv_cpu.cpp", "deform_roi_pool_cpu.cpp", "library.cpp")]
# Input dtypes the kernels take (half precision samples and accumulates in float32).
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_lock = threading.Lock()
_module = None  # torch.ops.dcn_cpu once built
_failed: Optional[str] = None


# Vector instructions to build for, keyed by the capability ATen's own CPU kernels use here
# (torch.backends.cpu.get_cpu_capability(), which honours ATEN_CPU_CAPABILITY). The build is named
# after it, so machines of different generations sharing one extension cache get their own build.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}


def _isa() -> str:
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "DEFAULT"
    return cap if cap in _ISA_FLAGS else "DEFAULT"


def _csrc_hash() -> str:
    digest = hashlib.sha1()
    for path in sorted(p for p in _CSRC.iterdir() if p.suffix in (".cpp", ".h")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _is_built(name: str, csrc_hash: str) -> bool:
    """Whether the extension cache already holds a build of these sources (so loading is quick)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        build = Path(_get_build_directory(name, False))
        ninja = build / "build.ninja"
        return (build / f"{name}.so").exists() and f"DCN_CSRC_HASH={csrc_hash}" in ninja.read_text()
    except Exception:  # a private torch helper: when it moves, only the log line is affected
        return False


def _missing_tools() -> list[str]:
    """What the build needs and this machine lacks, for the warning when it fails."""
    missing = []
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX", "c++"), "c++", "g++", "clang++")):
        missing.append("a C++ compiler (g++ or clang++)")
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: F401  (the pip package puts the binary on its own path)
        except ImportError:
            missing.append("ninja (`pip install ninja`)")
    return missing


def enabled() -> bool:
    return os.environ.get("DCN_CPU_KERNEL", "1").lower() not in ("0", "false", "no", "off")


def load():
    """The compiled extension, building it on first use; None when disabled or unbuildable."""
    global _module, _failed
    if _module is not None or _failed is not None or not enabled():
        return _module
    with _lock:
        if _module is None and _failed is None:
            try:
                # cpp_extension warns about a missing CUDA runtime on import; irrelevant here.
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
                from torch.utils.cpp_extension import load as load_extension

                isa = _isa()
                name, csrc_hash = f"dcn_cpu_kernels_{isa.lower()}", _csrc_hash()
                if _is_built(name, csrc_hash):
                    log.debug("loading dcn's CPU kernel from the extension cache")
                else:
                    log.info("dcn: building the CPU kernel for %s, once per machine (~20 s)", isa)
                load_extension(
                    name=name,
                    sources=[str(path) for path in _SOURCES],
                    # torch rebuilds when a source or a flag changes; the hash covers the headers.
                    extra_cflags=[
                        "-O3",
                        "-fopenmp",
                        "-fno-math-errno",
                        "-fno-trapping-math",
                        f"-DDCN_CSRC_HASH={csrc_hash}",
                        *_ISA_FLAGS.get(isa, []),
                    ],
                    extra_ldflags=["-fopenmp"],
                    is_python_module=False,  # registers torch.ops.dcn_cpu.* on load
                    verbose=False,
                )
                _module = torch.ops.dcn_cpu
            except Exception as exc:  # no compiler / ninja / headers: fall back, say why once
                _failed = f"{type(exc).__name__}: {exc}".splitlines()[0]
                missing = _missing_tools()
                fix = f"Install {' and '.join(missing)}" if missing else "Check the compiler output above"
                warnings.warn(
                    f"dcn: could not build the fused CPU kernel ({_failed}); using the slower "
                    f"pure-PyTorch path (same results). {fix}, or set DCN_CPU_KERNEL=0 to silence this.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _module
