"""Lightning callbacks that dcn's configs add (conf/callbacks/): orderly stops on signals,
reproducible resumes, pictures of the deformable sampling locations and of sample predictions."""

from dcn.callbacks.graceful_shutdown import GracefulShutdown
from dcn.callbacks.offset_viz import OffsetVisualization
from dcn.callbacks.rng_state import RNGStateCheckpoint
from dcn.callbacks.sample_predictions import SamplePredictions

__all__ = ["GracefulShutdown", "OffsetVisualization", "RNGStateCheckpoint", "SamplePredictions"]
