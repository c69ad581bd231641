"""Random geometric deformation of images: rotation, scale, translation and an optional elastic warp.

One implementation shared by the ``digits`` and ``mnist`` datamodules ("rotated/scaled digits"). All
parts are composed into a single sampling grid, so an image is interpolated once (bilinear, zero
fill), not once per part. Every random draw goes through an explicit :class:`torch.Generator`: the
training set passes none (the global RNG, seeded by ``seed_everything`` and re-drawn every epoch),
the validation and test sets pass one seeded by the sample's index, so their deformations are fixed
and metrics compare across runs and seeds.

torchvision's ``v2.RandomAffine`` + ``v2.ElasticTransform`` would resample twice, draw only from the
global RNG and cost ~10x more per small image on CPU; hence this module.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["GeometricDeformation"]


class GeometricDeformation:
    """Draw and apply a random geometric deformation per image.

    Each image independently gets: a rotation by an angle uniform in ``[-rotation, rotation]``
    degrees, an isotropic scaling uniform in ``[scale[0], scale[1]]``, a translation uniform in
    ``[-translation, translation]`` times the image's width (x) and height (y), all about the image
    centre; and, when ``elastic_alpha > 0``, an elastic warp (Simard et al., 2003): a per-pixel random
    displacement, uniform in [-1, 1], smoothed by a Gaussian of ``elastic_sigma`` pixels and scaled by
    ``elastic_alpha`` pixels. Content moved out of the image is lost; uncovered pixels become 0.

    Args:
        rotation: maximum absolute rotation in degrees (>= 0).
        scale: ``(low, high)`` range of the scale factor, ``0 < low <= high``.
        translation: maximum absolute shift as a fraction of the image size (in [0, 1)).
        elastic_alpha: elastic displacement strength in pixels (0 disables the warp).
        elastic_sigma: smoothness of the elastic displacement in pixels (> 0).

    Call with ``image`` (Tensor[C, H, W] or Tensor[N, C, H, W], floating point) and an optional
    ``generator``; returns a tensor of the same shape and dtype. With all strengths zero the input is
    returned unchanged (no interpolation).
    """

    def __init__(
        self,
        rotation: float = 0.0,
        scale: Sequence[float] = (1.0, 1.0),
        translation: float = 0.0,
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 4.0,
    ) -> None:
        if not rotation >= 0:
            raise ValueError(f"deformation.rotation must be >= 0 degrees, got {rotation}")
        scale = tuple(float(s) for s in scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"deformation.scale must be [low, high] with 0 < low <= high, got {list(scale)}")
        if not 0 <= translation < 1:
            raise ValueError(f"deformation.translation must be a fraction in [0, 1), got {translation}")
        if not elastic_alpha >= 0:
            raise ValueError(f"deformation.elastic_alpha must be >= 0 pixels, got {elastic_alpha}")
        if not elastic_sigma > 0:
            raise ValueError(f"deformation.elastic_sigma must be > 0 pixels, got {elastic_sigma}")
        self.rotation = float(rotation)
        self.scale = scale
        self.translation = float(translation)
        self.elastic_alpha = float(elastic_alpha)
        self.elastic_sigma = float(elastic_sigma)

    @property
    def is_identity(self) -> bool:
        """True when every strength is zero, so calling returns the input unchanged."""
        return (
            self.rotation == 0
            and self.scale == (1.0, 1.0)
            and self.translation == 0
            and self.elastic_alpha == 0
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rotation={self.rotation}, scale={list(self.scale)}, "
            f"translation={self.translation}, elastic_alpha={self.elastic_alpha}, "
            f"elastic_sigma={self.elastic_sigma})"
        )

    def __call__(self, image: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if image.ndim not in (3, 4) or not image.is_floating_point():
            raise ValueError(
                "GeometricDeformation expects a floating-point Tensor[C, H, W] or Tensor[N, C, H, W], "
                f"got {image.dtype} tensor of shape {tuple(image.shape)}"
            )
        if self.is_identity:
            return image
        batched = image.unsqueeze(0) if image.ndim == 3 else image
        grid = self.sample_grid(batched.shape[0], batched.shape[-2], batched.shape[-1], generator)
        out = F.grid_sample(
            batched, grid.to(batched.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out[0] if image.ndim == 3 else out

    def sample_grid(
        self, n: int, height: int, width: int, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Draw ``n`` deformations; returns their sampling grids, Tensor[n, height, width, 2].

        ``grid[i, y, x]`` is the (x, y) input location, in ``grid_sample``'s normalised coordinates
        (align_corners=False), that output pixel (y, x) of image i reads.
        """

        def uniform(low: float, high: float, *shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator) * (high - low) + low

        angle = uniform(-self.rotation, self.rotation, n) * (math.pi / 180)
        scale = uniform(self.scale[0], self.scale[1], n)
        shift = uniform(-self.translation, self.translation, n, 2) * torch.tensor([width, height])

        # Work in pixel units about the centre so rotations stay rigid on non-square images:
        # output point p maps to input point A^-1 (p + d(p) - t) with A = scale * R(angle).
        ys = (torch.arange(height, dtype=torch.float32) + 0.5) - height / 2
        xs = (torch.arange(width, dtype=torch.float32) + 0.5) - width / 2
        points = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H, W, 2] as (x, y)
        points = points.expand(n, height, width, 2)
        if self.elastic_alpha > 0:
            points = points + self._elastic_displacement(n, height, width, generator)
        points = points - shift[:, None, None, :]

        # Inverse of scale * [[cos, -sin], [sin, cos]] is (1 / scale) * [[cos, sin], [-sin, cos]];
        # written out elementwise (a batched 2x2 einsum is ~100x slower on CPU for small images).
        cos = (torch.cos(angle) / scale)[:, None, None]
        sin = (torch.sin(angle) / scale)[:, None, None]
        x, y = points[..., 0], points[..., 1]
        source = torch.stack([cos * x + sin * y, -sin * x + cos * y], dim=-1)
        half = torch.tensor([width / 2, height / 2], dtype=source.dtype)
        return source / half

    def _elastic_displacement(
        self, n: int, height: int, width: int, generator: Optional[torch.Generator]
    ) -> Tensor:
        """Smoothed random displacement in pixels, Tensor[n, H, W, 2]."""
        noise = torch.rand(n, 2, height, width, generator=generator) * 2 - 1
        # Separable Gaussian as two small matrix products (conv2d + padding cost ~50x more per
        # small image on CPU); borders replicate, so the field keeps its scale there.
        smooth = (
            _gaussian_matrix(height, self.elastic_sigma)
            @ noise
            @ _gaussian_matrix(width, self.elastic_sigma).T
        )
        return smooth.permute(0, 2, 3, 1) * self.elastic_alpha


@functools.lru_cache(maxsize=16)
def _gaussian_matrix(size: int, sigma: float) -> Tensor:
    """Tensor[size, size] ``G`` with ``(G @ v)[i] = sum_k w_k v[clamp(i + k)]``: a normalised Gaussian
    blur of ``v`` along its first axis, replicating the border values."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = torch.arange(-radius, radius + 1)
    weights = torch.exp(-0.5 * (taps.float() / sigma) ** 2)
    weights = weights / weights.sum()
    rows = torch.arange(size)[:, None].expand(size, taps.numel())
    cols = (rows + taps).clamp(0, size - 1)
    matrix = torch.zeros(size, size)
    matrix.index_put_((rows, cols), weights.expand(size, -1), accumulate=True)
    return matrix
