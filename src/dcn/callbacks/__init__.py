"""Lightning callbacks that dcn's configs add (conf/callbacks/): orderly stops on signals,
reproducible resumes, pictures of the task's predictions and of the deformable sampling locations."""

from dcn.callbacks.graceful_shutdown import GracefulShutdown
from dcn.callbacks.offset_viz import OffsetVisualization
from dcn.callbacks.rng_state import RNGStateCheckpoint
from dcn.callbacks.validation_pictures import ValidationPictures

__all__ = ["GracefulShutdown", "OffsetVisualization", "RNGStateCheckpoint", "ValidationPictures"]
