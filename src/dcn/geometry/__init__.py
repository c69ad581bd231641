"""Geometry shared by data, tasks and tools: box formats and overlaps (``boxes``) and the square context
crops of Siamese trackers (``crops``), in continuous pixel coordinates."""
