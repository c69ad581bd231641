"""What a run prints while it trains: progress, one line per epoch, the model summary.

* :func:`progress_bar` — Lightning's rich progress bar on a terminal; in a file or pipe (a SLURM log,
  ``> out.txt``) :class:`LogProgress`, one line every ``refresh_steps`` steps instead of bar frames.
* :class:`EpochLog` — at the end of every epoch, one line with every logged ``train/*`` and ``val/*``
  metric, through the logging system: it lands in ``train.log`` on any stream.
* :class:`ModelSummary` — the model summary as a plain table in the log, without the metric objects
  (they hold no parameters) and without the FLOPs column when nothing was measured.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.utilities import rank_zero_only

from dcn.console import is_terminal

__all__ = ["EpochLog", "LogProgress", "ModelSummary", "format_metrics", "progress_bar"]

log = logging.getLogger("dcn")


def format_metrics(metrics: Dict[str, Any], prefixes=("train/", "val/")) -> str:
    """``key=value`` pairs of the scalar metrics with the given prefixes, sorted, 4 significant digits."""
    parts = []
    for key in sorted(metrics):
        if not key.startswith(tuple(prefixes)) or key.endswith("_step"):
            continue
        try:
            value = float(metrics[key])
        except (TypeError, ValueError):
            continue
        parts.append(f"{key}={value:.4g}" if not math.isnan(value) else f"{key}=n/a")
    return " ".join(parts)


class LogProgress(ProgressBar):
    """Progress as log lines: ``epoch 3/10 step 120/400 (12.3 it/s) train/loss=0.51`` every
    ``refresh_steps`` training steps. For output that is not a terminal."""

    def __init__(self, refresh_steps: int = 50) -> None:
        super().__init__()
        if refresh_steps < 1:
            raise ValueError(f"refresh_steps must be >= 1, got {refresh_steps}")
        self.refresh_steps = refresh_steps
        self._enabled = True
        self._start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    @rank_zero_only
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = batch_idx + 1
        total = self.total_train_batches
        if not self._enabled or (done % self.refresh_steps and done != total):
            return
        rate = done / max(time.perf_counter() - self._start, 1e-9)
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        of = f"/{total}" if isinstance(total, int) else ""
        metrics = trainer.callback_metrics
        loss = metrics.get("train/loss_step")  # this step's loss (train/loss is the last epoch's mean)
        loss_text = f" train/loss={float(loss):.4g}" if loss is not None else ""
        log.info(f"epoch {trainer.current_epoch + 1}{epochs} step {done}{of} ({rate:.1f} it/s){loss_text}")


def progress_bar(refresh_steps: int = 50) -> ProgressBar:
    """Lightning's rich progress bar on a terminal, :class:`LogProgress` otherwise."""
    return RichProgressBar() if is_terminal() else LogProgress(refresh_steps)


class EpochLog(Callback):
    """One log line per epoch, at its end (after its validation): ``epoch 2/4 (step 80): train/acc=0.81
    train/loss=0.52 val/acc=0.79 ...``."""

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        log.info(
            f"epoch {trainer.current_epoch + 1}{epochs} (step {trainer.global_step}): "
            f"{format_metrics(trainer.callback_metrics)}"
        )


class ModelSummary(LightningModelSummary):
    """The model's layers and parameter counts, as a plain table through the logging system (so it is in
    ``train.log``), without torchmetrics objects (they hold no parameters) and without a FLOPs column
    when nothing was measured (a module without ``example_input_array``)."""

    @staticmethod
    def summarize(
        summary_data,
        total_parameters,
        trainable_parameters,
        model_size,
        total_training_modes,
        total_flops,
        **kwargs,
    ) -> None:
        from lightning.pytorch.utilities.model_summary import get_human_readable_count
        from torchmetrics import Metric, MetricCollection

        metric_types = {cls.__name__ for cls in _all_subclasses(Metric)} | {
            Metric.__name__,
            MetricCollection.__name__,
        }
        columns = dict(summary_data)
        keep = [i for i, t in enumerate(columns.get("Type", [])) if t not in metric_types]
        names = [
            n for n, _ in summary_data if n not in (" ", "Mode") and not (n == "FLOPs" and not total_flops)
        ]
        rows = [[str(i)] + [columns[n][k] for n in names] for i, k in enumerate(keep)]
        header = [" "] + names
        widths = [max(len(str(x)) for x in [h] + [r[j] for r in rows]) for j, h in enumerate(header)]
        lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(
            f"trainable params {get_human_readable_count(int(trainable_parameters))}, "
            f"total {get_human_readable_count(int(total_parameters))}, {model_size:.1f} MB"
            + (f", {get_human_readable_count(int(total_flops))} FLOPs" if total_flops else "")
        )
        log.info("\n".join(lines))


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)
