"""Where the deformable layers of a network sample, for one output unit, and how to draw it.

For a chosen unit of the last deformable layer's output, that layer reads its input at 9 locations
(3x3 kernel): the regular grid around the unit, each point moved by its learned offset. Each of those
locations is itself a unit of the previous deformable layer, which reads 9 moved locations, and so on:
for L stacked 3x3 deformable layers, up to 9^L points in the image — the picture of the DCN paper
(Dai et al. 2017, Fig. 5). The points are drawn over the image in red (with DCN v2, their opacity is
the product of the modulation masks along the path), the regular grid the same layers would use
without offsets in opaque blue with a white rim (visible on dark and on light images alike), the
chosen unit in green.

Geometry (exact for stride-1 nets like seed_net, approximate across resolution changes): a unit at
(i, j) of a layer with stride s, padding p and dilation d samples its input at
``(i*s - p + ky*d + dy, j*s - p + kx*d + dx)`` (torchvision's convention), where ``(dy, dx)`` is the
offset predicted at (i, j) (read bilinearly at fractional positions). Coordinates move between a
layer's input and the previous deformable layer's output, and from the first layer's input to the
image, by the ratio of their sizes (pixel centres aligned). Offset group 0 is drawn when a layer has
several.

Used by ``python -m dcn.viz`` (a trained run's checkpoint and an image file) and by the
:class:`~dcn.callbacks.OffsetVisualization` callback (during training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from dcn.ops import DeformConv2dPack

__all__ = [
    "GRID_COLOUR",
    "GRID_EDGE_COLOUR",
    "SamplingPoints",
    "draw_sampling_points",
    "render_figure",
    "sampling_points",
]

# Dodger blue: contrast ratio 6.4 against black and 3.3 against white (WCAG's 3 for graphics), and
# the white rim sets it off from mid-grey images too.
GRID_COLOUR = "#1e90ff"
GRID_EDGE_COLOUR = "white"


@dataclass
class SamplingPoints:
    """Where a network's deformable layers sample for one output unit, in image pixel coordinates.

    Attributes:
        points: Tensor[P, 2] (y, x) with P = prod(k_l) over the deformable layers (9^L for 3x3).
        weights: Tensor[P] in [0, 1]: product of the DCN v2 masks along each path (1 for DCN v1).
        grid: Tensor[P, 2]: the same construction with all offsets zero (the plain conv's locations).
        unit: (y, x) of the chosen output unit, in image coordinates.
        unit_index: (i, j) of that unit in the last deformable layer's output.
        layers: names of the deformable layers, first to last.
    """

    points: Tensor
    weights: Tensor
    grid: Tensor
    unit: Tuple[float, float]
    unit_index: Tuple[int, int]
    layers: List[str]


def _bilinear(field: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Sample ``field`` (Tensor[C, H, W]) at fractional positions (Tensor[P] each) -> Tensor[P, C];
    zero outside, as deformable convolution treats its input."""
    c, h, w = field.shape
    # grid_sample's align_corners=True maps -1..1 onto the centres of the first..last pixel.
    gx = 2 * x / max(w - 1, 1) - 1
    gy = 2 * y / max(h - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1).view(1, 1, -1, 2).to(field.dtype)
    out = torch.nn.functional.grid_sample(
        field[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[0, :, 0].T


def _rescale(coords: Tensor, src: Tuple[int, int], dst: Tuple[int, int]) -> Tensor:
    """Move (y, x) coordinates from a map of size ``src`` to one of size ``dst`` (pixel centres aligned)."""
    scale = torch.tensor([dst[0] / src[0], dst[1] / src[1]], dtype=coords.dtype)
    return (coords + 0.5) * scale - 0.5


@torch.no_grad()
def sampling_points(
    backbone: nn.Module, image: Tensor, point: Optional[Tuple[float, float]] = None
) -> SamplingPoints:
    """Sampling locations of ``backbone``'s deformable layers for one output unit.

    Args:
        backbone: any module containing :class:`~dcn.ops.DeformConv2dPack` layers (run in eval mode).
        image: Tensor[C, H, W], preprocessed as the network's input.
        point: (y, x) in image pixels; the output unit nearest to it is chosen. None: the centre unit.

    Returns:
        :class:`SamplingPoints` (see there for shapes).

    Raises:
        ValueError: ``image`` is not 3-D, or the network has no deformable layer (deform off).
    """
    if image.dim() != 3:
        raise ValueError(f"image must be Tensor[C, H, W], got shape {tuple(image.shape)}")
    layers = [(name, m) for name, m in backbone.named_modules() if isinstance(m, DeformConv2dPack)]
    if not layers:
        raise ValueError(
            "the network has no DeformConv2dPack layer (was it trained with backbone.deform.enabled=false?): "
            "there are no offsets to draw"
        )
    captured: Dict[str, Tuple[Tensor, Tensor, Optional[Tensor]]] = {}

    def hook(name: str):
        def run(module: DeformConv2dPack, args: Tuple[Tensor, ...], output: Tensor) -> None:
            offset, mask = module.offsets_and_mask(args[0])
            # On the CPU in float64: the geometry below is tiny and must not lose precision.
            captured[name] = (
                args[0].shape[-2:],
                output.shape[-2:],
                offset[0].detach().cpu().double(),
                None if mask is None else mask[0].detach().cpu().double(),
            )

        return run

    handles = [m.register_forward_hook(hook(name)) for name, m in layers]
    was_training = backbone.training
    try:
        backbone.eval()
        backbone(image[None])
    finally:
        backbone.train(was_training)
        for handle in handles:
            handle.remove()

    image_size = tuple(image.shape[-2:])
    last_name, last = layers[-1]
    out_size = tuple(captured[last_name][1])
    if point is None:
        index = ((out_size[0] - 1) // 2, (out_size[1] - 1) // 2)
    else:
        y, x = (
            _rescale(torch.tensor([point], dtype=torch.float64), image_size, out_size)[0]
            .round()
            .long()
            .tolist()
        )
        index = (min(max(y, 0), out_size[0] - 1), min(max(x, 0), out_size[1] - 1))

    points = torch.tensor([index], dtype=torch.float64)  # (y, x) in the current layer's output
    grid = points.clone()
    weights = torch.ones(1, dtype=torch.float64)
    for li in range(len(layers) - 1, -1, -1):
        name, layer = layers[li]
        in_size, _, offset, mask = captured[name]
        kh, kw = layer.kernel_size
        sh, sw = layer.stride
        ph, pw = layer.padding
        if layer._input_padding is not None:  # padding="same" with an even kernel: (left, right, top, bottom)
            pw, ph = pw + layer._input_padding[0], ph + layer._input_padding[2]
        dh, dw = layer.dilation
        k = kh * kw
        ky, kx = torch.meshgrid(
            torch.arange(kh, dtype=torch.float64), torch.arange(kw, dtype=torch.float64), indexing="ij"
        )
        base = torch.stack([ky.reshape(-1) * dh - ph, kx.reshape(-1) * dw - pw], dim=-1)  # [K, 2]
        stride = torch.tensor([sh, sw], dtype=torch.float64)
        # Offsets of group 0: channels 2k (dy) and 2k+1 (dx) for kernel position k (torchvision layout).
        sampled = _bilinear(offset[: 2 * k].double(), points[:, 0], points[:, 1]).view(-1, k, 2)
        new_points = points[:, None] * stride + base + sampled
        new_grid = grid[:, None] * stride + base
        if mask is not None:
            m = _bilinear(mask[:k].double(), points[:, 0], points[:, 1])  # [P, K]
            weights = (weights[:, None] * m).reshape(-1)
        else:
            weights = weights[:, None].expand(-1, k).reshape(-1)
        points, grid = new_points.reshape(-1, 2), new_grid.reshape(-1, 2)
        # Into the previous deformable layer's output (or the image, after the first layer).
        target = tuple(captured[layers[li - 1][0]][1]) if li > 0 else image_size
        points = _rescale(points, tuple(in_size), target)
        grid = _rescale(grid, tuple(in_size), target)

    unit = _rescale(torch.tensor([index], dtype=torch.float64), out_size, image_size)[0]
    return SamplingPoints(
        points.float(),
        weights.float(),
        grid.float(),
        (float(unit[0]), float(unit[1])),
        index,
        [name for name, _ in layers],
    )


def draw_sampling_points(ax: Any, image: Tensor, result: SamplingPoints, title: Optional[str] = None) -> None:
    """Draw ``image`` (Tensor[C, H, W] in [0, 1]-ish) with ``result`` on a matplotlib axis."""
    pixels = image.detach().float().cpu()
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp_min(1e-8)
    if pixels.shape[0] == 1:
        ax.imshow(pixels[0].numpy(), cmap="gray", interpolation="nearest")
    else:
        ax.imshow(pixels[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
    grid, points = result.grid.numpy(), result.points.numpy()
    size = max(2.0, 30.0 / max(1.0, len(points) ** 0.5))
    # The grid repeats positions (9^L paths onto (2L+1)^2 places for 3x3 layers): larger markers, drawn
    # under the points.
    ax.scatter(
        grid[:, 1],
        grid[:, 0],
        s=2 * size,
        c=GRID_COLOUR,
        edgecolors=GRID_EDGE_COLOUR,
        linewidths=0.4,
        label="regular grid",
    )
    colors = np.zeros((len(points), 4))
    colors[:, 0] = 1.0
    colors[:, 3] = 0.15 + 0.85 * result.weights.numpy()  # opacity: DCN v2 mask along the path
    ax.scatter(points[:, 1], points[:, 0], s=size, c=colors, linewidths=0, label="deformable sampling")
    ax.scatter(
        [result.unit[1]],
        [result.unit[0]],
        s=60,
        c="lime",
        marker="o",
        edgecolors="black",
        label="output unit",
    )
    h, w = image.shape[-2:]
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def render_figure(
    images: Sequence[Tensor], results: Sequence[SamplingPoints], titles: Optional[Sequence[str]] = None
):
    """A matplotlib figure with one panel per image (a row); the caller saves and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.5), squeeze=False)
    for i, (image, result) in enumerate(zip(images, results)):
        draw_sampling_points(axes[0, i], image, result, titles[i] if titles else None)
    axes[0, 0].legend(loc="lower left", fontsize=6, framealpha=0.7)
    fig.tight_layout()
    return fig
