"""The image classification head: global average pooling and a linear layer."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ClassificationHead"]


class ClassificationHead(nn.Module):
    """``Tensor[N, in_channels, H, W] -> logits Tensor[N, num_classes]``: global average pool, then Linear."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.pool(features).flatten(1))
