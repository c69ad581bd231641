"""Joint image + label-mask preprocessing for semantic segmentation (torchvision ``transforms.v2``).

Samples enter as ``(tv_tensors.Image uint8[3, H, W], tv_tensors.Mask uint8[H, W])`` and leave as
``(float32[3, h, w] normalised, int64[h, w])``. v2 applies one random draw to both, resizing masks
with nearest-neighbour (never blending class indices). Padding fills the image with the dataset
mean (0 after normalisation, i.e. "no signal") and the mask with 255 (ignored): padding with 0 would
teach the network that the border is background.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F_torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dcn.datamodules.voc.label_png import IGNORE_INDEX
from dcn.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "PadToMinSize",
    "RandomScale",
    "eval_transform",
    "pad_collate",
    "train_transform",
]


def _size_of(flat_inputs: List[Any]) -> Tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            height, width = F.get_size(inpt)
            return height, width
    raise TypeError("segmentation transforms expect a tv_tensors.Image or tv_tensors.Mask among their inputs")


class RandomScale(v2.Transform):
    """Resize image and mask by one factor drawn uniformly from ``scale_range`` (relative to the
    sample's own size, as DeepLab's 0.5-2.0 augmentation; v2.RandomResize draws absolute sizes)."""

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0)) -> None:
        super().__init__()
        low, high = (float(s) for s in scale_range)
        if not 0 < low <= high:
            raise ValueError(
                f"data.scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}"
            )
        self.scale_range = (low, high)

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = _size_of(flat_inputs)
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(()).item()
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        # Masks dispatch to nearest-neighbour resizing whatever the interpolation argument says.
        return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


class PadToMinSize(v2.Transform):
    """Pad bottom and right so both sides are at least ``size``; images get ``image_fill`` (per
    channel, in the image's dtype range), masks get 255 (ignore)."""

    def __init__(self, size: int | Sequence[int], image_fill: Sequence[float]) -> None:
        super().__init__()
        self.size = _pair(size, "crop size")
        self.fill = {tv_tensors.Image: list(image_fill), tv_tensors.Mask: IGNORE_INDEX}

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = _size_of(flat_inputs)
        return {"padding": [0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)]}

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.fill.get(type(inpt))
        if fill is None:
            return inpt
        return F.pad(inpt, params["padding"], fill=fill, padding_mode="constant")


def _pair(size: int | Sequence[int], what: str) -> Tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"{what} must be a positive int or [height, width], got {size!r}")
    return size  # type: ignore[return-value]


def _mean_fill(mean: Sequence[float]) -> List[float]:
    # The mean in the uint8 image domain: after normalisation padded pixels are ~0, "no signal".
    return [float(round(255 * m)) for m in mean]


def _to_model_input(mean: Sequence[float], std: Sequence[float]) -> List[v2.Transform]:
    return [
        v2.ToDtype(
            {tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True
        ),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def train_transform(
    crop_size: int | Sequence[int],
    scale_range: Optional[Sequence[float]] = (0.5, 2.0),
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """DeepLab's training augmentation: random scale, pad (mean / 255) to the crop size, random
    crop, random horizontal flip, then float conversion and normalisation.

    ``scale_range=None`` skips the scaling; ``flip=False`` the flip.
    """
    steps: List[v2.Transform] = []
    if scale_range is not None:
        steps.append(RandomScale(scale_range))
    size = _pair(crop_size, "data.crop_size")
    steps += [PadToMinSize(size, _mean_fill(mean)), v2.RandomCrop(size)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_model_input(mean, std))


def eval_transform(
    crop_size: Optional[int | Sequence[int]] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Validation/test preprocessing: the full image (``crop_size=None``) or a fixed centre crop
    (padded with mean / 255 when the image is smaller), then float conversion and normalisation."""
    steps: List[v2.Transform] = []
    if crop_size is not None:
        size = _pair(crop_size, "data.val_crop_size")
        steps += [PadToMinSize(size, _mean_fill(mean)), v2.CenterCrop(size)]
    return v2.Compose(steps + _to_model_input(mean, std))


def pad_collate(batch: Sequence[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """Stack ``(image float[3, H_i, W_i], mask int64[H_i, W_i])`` samples of different sizes into
    ``(Tensor[B, 3, H, W], Tensor[B, H, W])`` with ``H, W`` the largest sizes, padding bottom/right
    with 0 (the normalised mean) and 255 (ignored, so padded pixels never count in loss or metrics)."""
    if not batch:
        raise ValueError("pad_collate got an empty batch")
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images, masks = [], []
    for image, mask in batch:
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        pad = (0, width - image.shape[-1], 0, height - image.shape[-2])
        images.append(F_torch.pad(image.as_subclass(Tensor), pad, value=0.0))
        masks.append(F_torch.pad(mask.as_subclass(Tensor), pad, value=IGNORE_INDEX))
    return torch.stack(images), torch.stack(masks)
