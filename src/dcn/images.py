"""Image vocabulary shared by every layer: ImageNet normalisation constants.

(A ground-floor module: datamodules, tasks and tools import it; it imports nothing of dcn.)
"""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

# torchvision's ImageNet statistics (RGB, inputs in [0, 1]): what pretrained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
