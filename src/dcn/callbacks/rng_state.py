"""Save and restore the random number generators with each checkpoint, so a resumed run continues
the exact random stream of the uninterrupted one.

dcn's training data is random per epoch (shuffling, and new geometric deformations drawn from the
global generators on every read), and Lightning's checkpoints do not include generator states: a run
resumed after epoch 1 would therefore see other epoch-2 batches than the run that never stopped.
With this callback, training 2 epochs straight and training 1 epoch then resuming give the same
weights (tests/callbacks/test_resume.py).

The states of rank 0 are saved (Lightning writes checkpoints from rank 0) and restored on every
rank; under DDP the samplers are seeded by epoch anyway.
"""

from __future__ import annotations

import random
from typing import Any, Dict

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["RNGStateCheckpoint"]


class RNGStateCheckpoint(Callback):
    """Adds ``{"torch", "numpy", "python"[, "cuda"]}`` generator states to every checkpoint.

    Restored when Lightning restores callback states, i.e. before the first training batch of the
    resumed run (the sanity check runs with isolated generators, so it does not shift them).
    Everything is stored as tensors and plain Python values, so the checkpoint still loads with
    ``torch.load(..., weights_only=True)``.
    """

    def state_dict(self) -> Dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state: Dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        np_state = state_dict["numpy"]
        np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                             np_state["has_gauss"], np_state["cached_gaussian"]))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            states = state_dict["cuda"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
