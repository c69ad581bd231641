"""Just-in-time build of dcn's small C++ CPU kernel (csrc/deform_conv_cpu.cpp).

The kernel fuses the backward pass of the bilinear sampling (input scatter + the dot products the
offset and mask gradients need) into one vectorised pass; see the source for the design. It is
compiled once per machine with ``torch.utils.cpp_extension.load`` (cached under
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``; about a minute the first time).

Where it cannot be built (no C++ compiler, no ninja) or when ``DCN_CPU_KERNEL=0`` is set, the
PyTorch path falls back to ATen's ``grid_sampler_2d_backward``: same results, slower.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "deform_conv_cpu.cpp"
_lock = threading.Lock()
_module = None  # torch.ops.dcn_cpu once built
_failed: Optional[str] = None


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

                log.debug("loading dcn's CPU kernel (built once per machine, then cached)")
                load_extension(
                    name="dcn_deform_conv_cpu",
                    sources=[str(_SOURCE)],
                    extra_cflags=["-O3", "-fopenmp"],
                    extra_ldflags=["-fopenmp"],
                    is_python_module=False,  # registers torch.ops.dcn_cpu.* on load
                    verbose=False,
                )
                _module = torch.ops.dcn_cpu
            except Exception as exc:  # no compiler / ninja / headers: fall back, say why once
                _failed = f"{type(exc).__name__}: {exc}".splitlines()[0]
                warnings.warn(
                    f"dcn: could not build the fused CPU kernel ({_failed}); using the slower "
                    "pure-PyTorch backward. Install a C++ compiler and `ninja`, or set "
                    "DCN_CPU_KERNEL=0 to silence this.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _module
