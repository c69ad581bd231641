"""SiamRPN heads: cross-correlate template features with search features into anchor scores and deltas.

Both take ``template`` features ``Tensor[B, C, t, t]`` (7x7 in SiamRPN) and ``search`` features
``Tensor[B, C, s, s]`` and return ``cls`` ``Tensor[B, K, S, S]`` (one logit per anchor: object or not)
and ``loc`` ``Tensor[B, 4K, S, S]`` (deltas; channel ``c * K + k`` is coordinate c of anchor type k) with
``S = s - t + 1`` (their unpadded 3x3 convs shrink both inputs by 2, which keeps ``S``).

* :class:`DepthwiseRPNHead` (SiamRPN++, the default): per-channel correlation of adapted features,
  then 1x1 convs to the outputs. Cheap and well conditioned.
* :class:`UpChannelRPNHead` (the original SiamRPN): the template is turned into ``C x K`` (and
  ``C x 4K``) correlation kernels that are slid over the search features.
"""

from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DepthwiseRPNHead", "UpChannelRPNHead", "xcorr_depthwise", "xcorr_full"]


def xcorr_depthwise(search: Tensor, kernel: Tensor) -> Tensor:
    """Channel-by-channel cross-correlation: ``search`` ``Tensor[B, C, H, W]``, ``kernel``
    ``Tensor[B, C, h, w]`` -> ``Tensor[B, C, H - h + 1, W - w + 1]`` (each sample with its own kernel)."""
    b, c = kernel.shape[:2]
    if search.shape[:2] != (b, c):
        raise ValueError(
            f"search {tuple(search.shape)} and kernel {tuple(kernel.shape)} differ in batch or channels"
        )
    out = F.conv2d(
        search.reshape(1, b * c, *search.shape[2:]), kernel.reshape(b * c, 1, *kernel.shape[2:]), groups=b * c
    )
    return out.reshape(b, c, *out.shape[2:])


def xcorr_full(search: Tensor, kernel: Tensor) -> Tensor:
    """Full cross-correlation with per-sample kernels: ``search`` ``Tensor[B, C, H, W]``, ``kernel``
    ``Tensor[B, O * C, h, w]`` -> ``Tensor[B, O, H - h + 1, W - w + 1]``."""
    b, c = search.shape[:2]
    if kernel.shape[0] != b or kernel.shape[1] % c:
        raise ValueError(
            f"kernel {tuple(kernel.shape)} is not Tensor[{b}, O * {c}, h, w] for search {tuple(search.shape)}"
        )
    out = F.conv2d(
        search.reshape(1, b * c, *search.shape[2:]), kernel.reshape(-1, c, *kernel.shape[2:]), groups=b
    )
    return out.reshape(b, -1, *out.shape[2:])


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DepthwiseXCorr(nn.Module):
    """3x3 conv+BN+ReLU on each input, depthwise correlation, 1x1 conv+BN+ReLU, 1x1 conv to
    ``out_channels``."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.conv_kernel = _conv_bn_relu(in_channels, hidden, 3)
        self.conv_search = _conv_bn_relu(in_channels, hidden, 3)
        self.head = nn.Sequential(_conv_bn_relu(hidden, hidden, 1), nn.Conv2d(hidden, out_channels, 1))

    def forward(self, template: Tensor, search: Tensor) -> Tensor:
        return self.head(xcorr_depthwise(self.conv_search(search), self.conv_kernel(template)))


class DepthwiseRPNHead(nn.Module):
    """SiamRPN++'s depthwise correlation RPN head for ``num_anchors`` anchor types."""

    def __init__(self, num_anchors: int, in_channels: int = 256, hidden: int = 256) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.cls = DepthwiseXCorr(in_channels, hidden, num_anchors)
        self.loc = DepthwiseXCorr(in_channels, hidden, 4 * num_anchors)

    def forward(self, template: Tensor, search: Tensor) -> Tuple[Tensor, Tensor]:
        return self.cls(template, search), self.loc(template, search)


class UpChannelRPNHead(nn.Module):
    """The original SiamRPN head: the template becomes ``in_channels x K`` classification and
    ``in_channels x 4K`` regression kernels (3x3 convs), correlated with 3x3-conv'd search features."""

    def __init__(self, num_anchors: int, in_channels: int = 256) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.template_cls = nn.Conv2d(in_channels, in_channels * num_anchors, 3)
        self.template_loc = nn.Conv2d(in_channels, in_channels * 4 * num_anchors, 3)
        self.search_cls = nn.Conv2d(in_channels, in_channels, 3)
        self.search_loc = nn.Conv2d(in_channels, in_channels, 3)
        self.loc_adjust = nn.Conv2d(4 * num_anchors, 4 * num_anchors, 1)

    def forward(self, template: Tensor, search: Tensor) -> Tuple[Tensor, Tensor]:
        cls = xcorr_full(self.search_cls(search), self.template_cls(template))
        loc = self.loc_adjust(xcorr_full(self.search_loc(search), self.template_loc(template)))
        return cls, loc
