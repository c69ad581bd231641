"""Experiment loggers that dcn's configs add on top of Lightning's (conf/logger/)."""

from dcn.loggers.wandb_logger import WandbLogger, wandb_credentials_available, wandb_run_id_of

__all__ = ["WandbLogger", "wandb_credentials_available", "wandb_run_id_of"]
