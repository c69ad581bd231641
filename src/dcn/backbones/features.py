"""The contract every dcn backbone keeps: named multi-scale features with known channels and strides.

A backbone maps ``x (Tensor[N, C_in, H, W])`` to an ordered ``dict[str, Tensor]`` of feature maps,
shallow to deep. ``feature_info`` describes those maps in the same order, so heads (classifier,
DeepLab, FPN, SiamRPN) can be built before any data flows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

__all__ = ["FeatureInfo", "Backbone"]


@dataclass(frozen=True)
class FeatureInfo:
    """One feature level: its key in the backbone's output dict, channel count and stride.

    ``stride`` is the input-to-feature downsampling factor: a ``H x W`` input gives a map of about
    ``ceil(H / stride) x ceil(W / stride)``.
    """

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: subclasses set ``self.feature_info`` and implement ``forward``.

    ``forward(x: Tensor[N, C_in, H, W]) -> dict[str, Tensor[N, C_i, H_i, W_i]]`` in the order of
    ``feature_info``; the last entry is the deepest feature (what a classifier pools).
    """

    feature_info: List[FeatureInfo]
    in_channels: int
    # For pretrained loading (dcn.backbones.pretrained): the stem conv's weight, adapted when the
    # file has another number of input channels; keys this backbone replaced by design (a file's
    # tensor of another shape for them is skipped, not an error).
    stem_weight_key: Optional[str] = None
    replaced_keys: Tuple[str, ...] = ()

    @property
    def out_channels(self) -> int:
        """Channels of the deepest feature map (``feature_info[-1].channels``)."""
        return self.feature_info[-1].channels

    @property
    def out_stride(self) -> int:
        """Stride of the deepest feature map (``feature_info[-1].stride``)."""
        return self.feature_info[-1].stride

    def forward(self, x: Tensor) -> Dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expects a 4-D input (N, {self.in_channels}, H, W), got {shape}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for in_channels={self.in_channels} but the input has "
                f"{x.shape[1]} channels (shape {tuple(x.shape)}); set the backbone's in_channels to match the data"
            )
