"""Stop training cleanly on SIGTERM or SIGINT (Ctrl+C): finish the batch, write a checkpoint, exit.

Lightning already turns SIGTERM into an orderly stop: its handler sets ``trainer.received_sigterm``,
the loops (synchronised across DDP ranks) raise ``SIGTERMException`` at the next batch boundary, and
every callback's ``on_exception`` runs. This callback adds the two missing pieces:

- SIGINT takes the same path as SIGTERM (Lightning's default reaction to Ctrl+C is a
  ``KeyboardInterrupt`` wherever the main thread happens to be, possibly half-way through an
  optimizer step). A second Ctrl+C restores Python's default and interrupts at once.
- On the stop, the full training state (weights, optimizer, scheduler, loop progress, callback
  states) is saved to ``<dirpath>/<filename>.ckpt`` (by default the run's ``last.ckpt``), from which
  ``python train.py ckpt_path=<that file>`` resumes, mid-epoch included.

``train.py`` then records the run as ``"interrupted"`` in results.json; the process exits with
Lightning's status for a SIGTERM stop (0, "clean"), the sweep (if any) stops with it.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["GracefulShutdown"]


class GracefulShutdown(Callback):
    """Checkpoint and stop on SIGTERM/SIGINT during ``fit`` (see the module docstring).

    Args:
        dirpath: directory of the checkpoint written on a stop (the run's ``checkpoints/``).
        filename: its name without ``.ckpt``; ``"last"`` replaces ModelCheckpoint's last.ckpt,
            so the documented resume command (``ckpt_path=<run>/checkpoints/last.ckpt``) always
            picks up the latest state.
        handle_sigint: route Ctrl+C through the same orderly stop (a second Ctrl+C aborts).
    """

    def __init__(
        self, dirpath: os.PathLike | str, filename: str = "last", handle_sigint: bool = True
    ) -> None:
        super().__init__()
        if not filename or filename.endswith(".ckpt") or "/" in filename:
            raise ValueError(f"filename must be a bare name without '.ckpt' or '/', got {filename!r}")
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.handle_sigint = handle_sigint
        self.saved_path: Optional[Path] = None  # where the stop checkpoint went, once written

    @property
    def ckpt_path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # By now Lightning has installed its SIGTERM handler (after on_fit_start), and it restores
        # every handler at teardown, SIGINT included, so nothing installed here outlives the fit.
        # Signal handlers can only be set from the main thread.
        if not self.handle_sigint or threading.current_thread() is not threading.main_thread():
            return
        on_sigterm = signal.getsignal(signal.SIGTERM)
        if not callable(on_sigterm):
            return

        def on_sigint(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl+C aborts
            rank_zero_info(
                "\nInterrupted: finishing the current batch, then saving a checkpoint to "
                f"{self.ckpt_path} (press Ctrl+C again to abort without saving)"
            )
            on_sigterm(signum, frame)

        signal.signal(signal.SIGINT, on_sigint)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return  # a genuine error: the state may be inconsistent, so no checkpoint
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or trainer.global_step == 0:
            return  # nothing trained yet (or testing): a checkpoint would hold no progress
        trainer.save_checkpoint(self.ckpt_path)  # all ranks take part; rank 0 writes
        self.saved_path = self.ckpt_path
        rank_zero_info(
            f"Stopped by signal at epoch {trainer.current_epoch}, step {trainer.global_step}; "
            f"checkpoint saved. Resume with: python train.py ckpt_path={self.ckpt_path}"
        )
