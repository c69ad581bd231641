"""Train and test one model from the Hydra config in ``dcn/conf``: ``dcn-train [overrides]`` (or
``python train.py [overrides]`` in a checkout).

Composes the config, then: seed -> datamodule -> backbone (``in_channels`` from the datamodule) ->
task (``num_classes`` from the datamodule) -> callbacks, loggers -> Trainer -> fit -> test the best
checkpoint -> ``<run dir>/results.json`` (see dcn.results) and a short summary, all in the console and
``<run dir>/train.log``. A sweep: ``dcn-train -m backbone.deform.enabled=false,true seed=0,1,2``.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Optional

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from omegaconf import DictConfig

from dcn import resolvers
from dcn.checkpoints import check_checkpoint
from dcn.console import configure_logging, log_to_file_only
from dcn.extras import check_command_line, check_config
from dcn.hydra_callbacks import exit_if_refused
from dcn.instantiate import instantiate_group
from dcn.results import RunRecord, fit_outcome, parameter_counts, trainer_description
from dcn.trainer_config import check_trainer_config

__all__ = ["cli", "main", "train"]

resolvers.register()  # before Hydra composes: the run directory pattern uses ${dcn.uid:}
log = logging.getLogger("dcn")


def train(cfg: DictConfig, record: RunRecord) -> None:
    """Build everything from ``cfg``, fit and test; fills ``record`` as it goes."""
    check_trainer_config(
        cfg.trainer
    )  # before anything is built: a wrong type is named, not asserted deep down
    check_config(cfg)  # an optional dependency the config needs (W&B, COCO, ...) is named with its extra
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    backbone = hydra.utils.instantiate(cfg.backbone, in_channels=datamodule.in_channels)
    model = hydra.utils.instantiate(cfg.task, backbone=backbone, num_classes=datamodule.num_classes)
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    for logger in loggers:  # the resolved config: W&B run config, TensorBoard hparams, csv/hparams.yaml
        logger.log_hyperparams(record.data["config"])
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    record.update(parameters=parameter_counts(model), trainer=trainer_description(trainer))
    record.write()

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:  # a truncated or mismatching file fails here, with its name, not deep inside Lightning
        check_checkpoint(ckpt_path, model)
    if cfg.train:
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        record.update(timing={"fit_s": round(time.perf_counter() - start, 3)}, **fit_outcome(trainer))
        ckpt_path = (record.data["best"] or {}).get("checkpoint")
        if not ckpt_path and not trainer.fast_dev_run:  # fast_dev_run writes no checkpoints, by design
            rank_zero_warn("no best checkpoint (no ModelCheckpoint callback?): testing the final weights")
    if cfg.test:
        if not ckpt_path and not cfg.train:
            rank_zero_warn("test only (train=false) without ckpt_path: testing untrained weights")
        start = time.perf_counter()
        # verbose=False: the test metrics are printed once, in the run's summary (same numbers, same units).
        metrics = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path or None, verbose=False)
        record.update(
            metrics=metrics[0] if metrics else {}, timing={"test_s": round(time.perf_counter() - start, 3)}
        )


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    exit_if_refused()  # a reused or unwritable run directory (dcn.hydra_callbacks): one line, exit 2
    configure_logging()  # Lightning's messages and warnings into the console and train.log
    record = RunRecord(cfg.paths.output_dir, cfg)
    record.write()  # status "running": a run killed mid-way still shows up, as unfinished
    rank_zero_only(log.info)(record.header())
    try:
        train(cfg, record)
    except BaseException as error:  # record every way of ending, then let it propagate
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
        record.finish("interrupted" if interrupted else "failed", error)
        rank_zero_only(log.info)(record.summary())
        if not interrupted:  # the console gets Hydra's short form; train.log the whole traceback
            rank_zero_only(log_to_file_only)(
                "".join(traceback.format_exception(type(error), error, error.__traceback__))
            )
        raise
    record.finish("completed")
    rank_zero_only(log.info)(record.summary())
    # The monitored validation metric, for hyper-parameter sweepers that optimise main()'s return value.
    return (record.data["best"] or {}).get("value")


def cli() -> None:
    """The ``dcn-train`` command (and ``python train.py``): checks the command line's launcher and
    sweeper plugins, then runs :func:`main` under Hydra."""
    try:
        check_command_line()
    except ImportError as error:
        raise SystemExit(f"error: {error}") from None
    main()
