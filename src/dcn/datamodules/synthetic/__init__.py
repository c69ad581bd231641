"""Generators of offline datasets in real formats, and the folder cache they are written into.

``shapes`` draws deformed shapes on textured backgrounds (segmentation and detection), ``tracks``
moving deforming blobs (tracking); ``cache`` keeps each generated dataset under a hash of its
parameters, with :class:`~dcn.datamodules.synthetic.cache.GeneratedDataset`, the mixin of the three
synthetic datamodules.
"""

from dcn.datamodules.synthetic.cache import GeneratedDataset
from dcn.datamodules.synthetic.shapes import SyntheticShapesGenerator
from dcn.datamodules.synthetic.tracks import SyntheticTracksGenerator

__all__ = ["GeneratedDataset", "SyntheticShapesGenerator", "SyntheticTracksGenerator"]
