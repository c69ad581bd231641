"""A test callback that sends a signal to its own process after a given training step, so tests can
interrupt a train.py subprocess at an exact point (the OS delivers it like a real kill/Ctrl+C)."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class SignalAtStep(Callback):
    def __init__(self, signum: str = "SIGTERM", at_step: int = 1) -> None:
        self.signum = getattr(signal, signum)
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)
