"""Test callbacks that act inside training runs (train.py subprocesses included): one draws from the
global generators in every training step, as dropout or random sampling inside a model would; one
records the targets of every training batch."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RandomDraws(Callback):
    """Shifts the torch, numpy and python generators before every training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.rand(3)
        np.random.rand(3)
        random.random()


class RecordTargets(Callback):
    """Appends ``[epoch, batch_idx, targets]`` per training batch, one JSON line each, to ``path``
    (several runs may append to one file: an interrupted run, then its resumption)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _, targets = batch
        with self.path.open("a") as f:
            f.write(json.dumps([trainer.current_epoch, batch_idx, targets.tolist()]) + "\n")
