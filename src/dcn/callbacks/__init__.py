"""Lightning callbacks that dcn's configs add (conf/callbacks/): orderly stops on signals,
reproducible resumes, pictures of the task's predictions and of the deformable sampling locations, and
what the console and train.log show (progress, one line per epoch, the model summary)."""

from dcn.callbacks.console import EpochLog, LogProgress, ModelSummary, progress_bar
from dcn.callbacks.graceful_shutdown import GracefulShutdown
from dcn.callbacks.offset_viz import OffsetVisualization
from dcn.callbacks.rng_state import RNGStateCheckpoint
from dcn.callbacks.validation_pictures import ValidationPictures

__all__ = [
    "EpochLog",
    "GracefulShutdown",
    "LogProgress",
    "ModelSummary",
    "OffsetVisualization",
    "RNGStateCheckpoint",
    "ValidationPictures",
    "progress_bar",
]


def __getattr__(name: str):
    if name == "SamplePredictions":
        raise AttributeError(
            "dcn.callbacks.SamplePredictions was replaced by dcn.callbacks.ValidationPictures "
            "(callbacks=validation_pictures), which draws the validation pictures of every task"
        )
    raise AttributeError(f"module 'dcn.callbacks' has no attribute {name!r}")
