"""The console and the run's log: one place for how entry points talk to the user.

* :func:`configure_logging` sends Lightning's messages through the root logger, whose handlers Hydra
  configures (``conf/hydra/default.yaml``: the console, and ``<run dir>/train.log``), and routes Python
  warnings there too: ``train.log`` then holds everything the console shows except progress bars.
* :func:`quiet_known_noise` filters the library messages a dcn run triggers that say nothing to a user.
  Each filter is narrow (one message) and :data:`KNOWN_NOISE` gives its reason; everything else, including
  other warnings from the same libraries, is shown.
* :func:`log_to_file_only` writes to ``train.log`` without repeating on the console (tracebacks).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import List, Tuple

__all__ = [
    "KNOWN_NOISE",
    "configure_logging",
    "is_terminal",
    "log_to_file_only",
    "quiet_known_noise",
    "run_parser",
]

# (logger or warning category, message pattern, why it is filtered)
KNOWN_NOISE: List[Tuple[str, str, str]] = [
    (
        "warning",
        r".*isinstance\(treespec, LeafSpec\)` is deprecated",
        "Lightning's own use of a torch API deprecated in torch 2.9; nothing a user can change",
    ),
    (
        "log",
        r"💡 Tip: ",
        "an advert for Lightning's cloud services (litlogger, litmodels), printed by every Trainer",
    ),
    (
        "log",
        r"Trainer already configured with model summary callbacks",
        "dcn's configs pass their own model summary on purpose",
    ),
    (
        "warning",
        r"anonymous setting has no effect",
        "W&B notes a setting of its own default; dcn never asks for anonymous runs",
    ),
]


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (stdout by default) is an interactive terminal (not a file, pipe or SLURM log)."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _DropMessages(logging.Filter):
    def __init__(self, patterns: List[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


def quiet_known_noise() -> None:
    """Install the filters of :data:`KNOWN_NOISE` (idempotent): warnings through the warnings module,
    log messages on the handlers of the root logger and of Lightning's loggers (a logger's own filters
    would miss the messages of its children, e.g. ``lightning.pytorch.utilities.rank_zero``)."""
    for kind, pattern, _ in KNOWN_NOISE:
        if kind == "warning":
            warnings.filterwarnings("ignore", message=pattern)
    log_patterns = [pattern for kind, pattern, _ in KNOWN_NOISE if kind == "log"]
    for name in ("",) + _LIGHTNING_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _DropMessages) for f in handler.filters):
                handler.addFilter(_DropMessages(log_patterns))


def configure_logging() -> None:
    """Lightning's loggers and Python warnings through the root logger's handlers (console and
    ``train.log`` under Hydra). Lightning installs its own stderr handlers when imported before any
    logging is configured, and stops propagation: both are undone here."""
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:  # someone (Hydra) configured the root logger
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
    logging.captureWarnings(True)
    quiet_known_noise()


def log_to_file_only(message: str, level: int = logging.ERROR) -> None:
    """Emit ``message`` to the root logger's file handlers only (e.g. a traceback the console already
    shows in Hydra's short form)."""
    record = logging.LogRecord("dcn", level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_parser(prog: str, description: str, kind: str = "") -> argparse.ArgumentParser:
    """The argument parser of a command on a trained run (``python -m dcn.eval``, ``dcn.export``,
    ``dcn.detect``, ...). Its first argument, ``run``, is a train.py run directory or one of its
    checkpoints, the same for every such command; :func:`dcn.trained_task.checkpoint_of` picks a
    run directory's checkpoint. ``kind`` names the task the run must be of ("detection", ...)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    what = f"a train.py {kind} run" if kind else "a train.py run"
    help = f"{what}: its directory (the best checkpoint) or one of its checkpoints (*.ckpt)"
    parser.add_argument("run", type=Path, help=help)
    return parser
