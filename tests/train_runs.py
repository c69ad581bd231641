"""Small train.py runs for tests: the overrides that make the default config's run tiny, and
``python train.py`` in a subprocess with its files kept under the test's directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]

# The default config (seed_net on digits) on 12-pixel canvases, without progress bar or model summary.
TINY_DIGITS = [
    "data.canvas_size=12",
    "data.digit_size=10",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
]


def run_train_py(
    args: Sequence[str], cwd: Path, timeout: float = 600, env: Optional[Mapping[str, str]] = None
) -> subprocess.CompletedProcess:
    """``python train.py *args`` in ``cwd`` with ``DCN_ROOT=cwd`` (so its logs land there, plus
    ``env``); fails the test with the end of stderr unless it exits 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env={**os.environ, "DCN_ROOT": str(cwd), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done
