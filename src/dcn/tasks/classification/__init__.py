"""Image classification: GAP + Linear head over a backbone's deepest feature, cross-entropy, accuracy."""

from dcn.tasks.classification.head import ClassificationHead
from dcn.tasks.classification.module import ClassificationTask

__all__ = ["ClassificationHead", "ClassificationTask"]
