"""Save and restore the random number generators with each checkpoint, so a resumed run continues
the exact random stream of the uninterrupted one, also from a checkpoint taken mid-epoch.

dcn's training data is random per epoch (shuffling, and new geometric deformations drawn from the
global generators on every read), and Lightning's checkpoints do not include generator states: a run
resumed after epoch 1 would therefore see other epoch-2 batches than the run that never stopped.

A checkpoint taken mid-epoch (a SIGTERM or Ctrl+C stop, see GracefulShutdown) needs one more thing.
Lightning resumes such an epoch with a *new* iterator over a plain DataLoader and only counts the
batches already done, so the rest of the epoch would come from another shuffle: some samples seen
twice that epoch, others not at all. This callback therefore also keeps the generator states from
which the current epoch's iterator was made, and on resuming mid-epoch (at ``on_train_start``)
replays the epoch's start: it makes the iterator again from those states, reads and discards the
batches already trained on, then restores the generators as they were at the checkpoint. The rest
of the epoch gets the batches, and the random draws, of the run that never stopped. Replaying
costs the loading time (not the training time) of the batches already done in that epoch.

With this callback, training straight through and training with interruptions (at an epoch end or
mid-epoch) give bit-equal weights when data is loaded in the main process (``data.num_workers=0``;
tests/callbacks/test_resume.py). Loader worker processes draw from generators of their own, which
no checkpoint holds: with workers, the interrupted epoch still continues its shuffle, but random
augmentations (and the shuffles of later epochs) after a resume differ from the uninterrupted
run's (docs/experiments.md).

The states of rank 0 are saved (Lightning writes checkpoints from rank 0) and restored on every
rank; under DDP the samplers are seeded by epoch anyway.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

__all__ = ["RNGStateCheckpoint"]


class RNGStateCheckpoint(Callback):
    """Adds the ``{"torch", "numpy", "python"[, "cuda"]}`` generator states to every checkpoint, and
    under ``"epoch_start"`` the states the current epoch's training iterator was made from.

    Restored when Lightning restores callback states, i.e. before the first training batch of the
    resumed run (the sanity check runs with isolated generators, so it does not shift them). A
    mid-epoch checkpoint's epoch is replayed at the resumed run's ``on_train_start`` (see the module
    docstring). Everything is stored as tensors and plain Python values, so the checkpoint
    still loads with ``torch.load(..., weights_only=True)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._epoch_start: Optional[Dict[str, Any]] = None  # states the current epoch's iterator came from
        self._setup_epoch: Optional[int] = None  # the epoch whose iterator the fit loop's setup made
        self._epoch_from_setup = True  # the current epoch is that one
        self._loaded: Optional[Dict[str, Any]] = None  # a restored checkpoint's states, until training starts

    def state_dict(self) -> Dict[str, Any]:
        state = _current_states()
        if self._epoch_start is not None:
            state["epoch_start"] = self._epoch_start
            state["epoch_from_setup"] = self._epoch_from_setup
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        _set_states(state_dict)
        self._loaded = state_dict
        # The fit loop makes the first epoch's iterator from the states as restored (see on_fit_start).
        self._epoch_start = _current_states()
        self._epoch_from_setup = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The first epoch's iterator is made in the fit loop's setup, after this hook and the
        # sanity check (which runs with isolated generators); later epochs make theirs right after
        # on_train_epoch_start. Some strategies restore callback states only after this hook:
        # load_state_dict then captures again.
        self._epoch_start = _current_states()
        self._epoch_from_setup = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The loops are restored by now, and a resumed epoch gets no on_train_epoch_start.
        self._setup_epoch = trainer.current_epoch
        loaded, self._loaded = self._loaded, None
        if loaded is not None and 0 < _batches_done(trainer) < trainer.num_training_batches:
            self._replay_epoch_start(trainer, loaded)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self._setup_epoch:
            self._epoch_start = _current_states()
            self._epoch_from_setup = False

    def _replay_epoch_start(self, trainer: L.Trainer, loaded: Dict[str, Any]) -> None:
        """Make the interrupted epoch's iterator again and skip the batches it already trained on."""
        from lightning.pytorch.loops.fetchers import _DataLoaderIterDataFetcher

        done, total = _batches_done(trainer), trainer.num_training_batches
        epoch_start = loaded.get("epoch_start")
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if epoch_start is None or fetcher is None or isinstance(fetcher, _DataLoaderIterDataFetcher):
            why = (
                "the checkpoint holds no epoch-start generator states (written by an older dcn)"
                if epoch_start is None
                else (
                    "the fit loop's data fetcher cannot be replayed (a training_step taking dataloader_iter?)"
                )
            )
            rank_zero_warn(
                f"RNGStateCheckpoint: resuming mid-epoch ({done} of {total} batches done), but {why}: "
                "the rest of the epoch comes from a new shuffle, not the one the interrupted run would "
                "have used"
            )
            return
        _set_states(epoch_start)
        if loaded.get("epoch_from_setup", True):
            # The interrupted run made this epoch's iterators anew, and each drew a base seed from the
            # global generator (torch's DataLoader does on every new iterator). A loader with
            # persistent workers already has its iterator here (made by this run's setup) and only
            # resets it, drawing nothing: draw as the new one did, so the shuffle that follows is the same.
            for loader in fetcher.combined_loader.flattened:
                if isinstance(loader, DataLoader) and loader.persistent_workers and loader.num_workers > 0:
                    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
        iter(fetcher)  # the call the fit loop made when the epoch started, from the same states
        for _ in range(done):
            next(fetcher)
        fetcher.fetched -= done  # the epoch loop adds the batches done to this count when it starts
        _set_states(loaded)  # as at the checkpoint: what the uninterrupted run had before the next batch
        self._epoch_start = epoch_start
        self._epoch_from_setup = bool(loaded.get("epoch_from_setup", True))
        rank_zero_info(
            f"Resuming mid-epoch: re-read (not trained on again) the {done} of {total} batches of epoch "
            f"{trainer.current_epoch} done before the stop, so the rest of the epoch continues its shuffle"
        )


def _batches_done(trainer: L.Trainer) -> int:
    """Training batches of the current epoch that Lightning will not run again after a restore.

    Lightning counts a batch done when ``completed``; a checkpoint written in ``on_train_batch_end``
    (processed, not yet completed) counts it too (its ``RESTARTED_ON_TRAIN_BATCH_END`` stage)."""
    current = trainer.fit_loop.epoch_loop.batch_progress.current
    on_batch_end = current.ready == current.started == current.processed == current.completed + 1
    return current.completed + int(on_batch_end)


def _current_states() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_states(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
