"""Freezing BatchNorm: replace ``nn.BatchNorm2d`` layers by torchvision's ``FrozenBatchNorm2d``.

Detection and DeepLab fine-tune pretrained backbones with small per-device batches (1-4 images per
GPU); their batch statistics are too noisy to update BatchNorm, so the pretrained statistics and
affine parameters are kept fixed. A frozen layer computes ``(x - running_mean) / sqrt(running_var
+ eps) * weight + bias`` with constants, in training as in evaluation.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["freeze_batch_norm"]


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.BatchNorm2d`` inside ``module`` (or ``module`` itself) by a
    ``FrozenBatchNorm2d`` holding a copy of its statistics and affine parameters; returns the
    (possibly new) module. State-dict keys are unchanged (``num_batches_tracked`` is dropped)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batch_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module
