"""SiamRPN inference: from a first-frame box to a box in every later frame.

Each step crops a search patch around the last position (at the scale of the last size, see
:mod:`dcn.geometry.crops`), scores every anchor and picks one after SiamRPN's
post-processing (:func:`select_box`):

* **scale and aspect-ratio change penalty**: ``penalty = exp(-k (r_c s_c - 1))`` where ``s_c`` and
  ``r_c`` (each ``max(x, 1/x)``) compare the proposal's padded size and aspect ratio with the last box's;
* **cosine window**: ``score' = (1 - w) * penalty * score + w * hanning``, favouring small motion;
* **size smoothing**: the new size is ``(1 - lr) * last + lr * proposal`` with
  ``lr = penalty * score * size_lr``; the centre moves to the proposal's.

Boxes are clipped so the centre stays in the image and the size within ``[min_size, image size]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from dcn.geometry.boxes import cxcywh_to_xywh, xywh_to_cxcywh
from dcn.geometry.crops import CropWindow, context_side, crop_patch, search_window
from dcn.tasks.tracking.box_coder import decode_boxes
from dcn.tasks.tracking.loss import flatten_head_outputs

__all__ = ["SiamRPNTracker", "TrackerOptions", "cosine_window", "select_box"]


@dataclass(frozen=True)
class TrackerOptions:
    """Inference settings (config ``task.tracker``); the defaults are pysot's SiamRPN values."""

    penalty_k: float = 0.04  # strength of the penalty on scale and aspect-ratio change
    window_influence: float = 0.44  # weight of the cosine window against the penalised score
    size_lr: float = 0.33  # rate at which the box size follows the best proposal
    context: float = 0.5  # crop margin p = context * (w + h) around the box
    min_size: float = 10.0  # smallest tracked box side, pixels

    def __post_init__(self) -> None:
        if not 0 <= self.window_influence <= 1:
            raise ValueError(f"task.tracker.window_influence must be in [0, 1], got {self.window_influence}")
        if not 0 <= self.size_lr <= 1:
            raise ValueError(f"task.tracker.size_lr must be in [0, 1], got {self.size_lr}")
        if self.penalty_k < 0 or self.context < 0 or self.min_size < 0:
            raise ValueError("task.tracker.penalty_k, context and min_size must be >= 0")


def cosine_window(score_size: int, num_anchors: int) -> Tensor:
    """Hanning window over the response map, repeated for each anchor type: ``Tensor[K * S * S]`` in
    anchor order."""
    hann = torch.hann_window(score_size + 2, periodic=False, dtype=torch.float64)[1:-1]  # no zero rim
    window = torch.outer(hann, hann).flatten()
    return (window / window.max()).repeat(num_anchors).float()


def _change(r: Tensor) -> Tensor:
    return torch.maximum(r, 1.0 / r)


def _padded_size(w: Tensor, h: Tensor, context: float) -> Tensor:
    pad = context * (w + h)
    return torch.sqrt((w + pad) * (h + pad))


def select_box(
    scores: Tensor, boxes: Tensor, last_size: Tuple[float, float], window: Tensor, options: TrackerOptions
) -> Tuple[int, Tensor, Tensor]:
    """SiamRPN's choice among proposals.

    Args:
        scores: ``Tensor[A]`` object probabilities.
        boxes: ``Tensor[A, 4]`` decoded proposals, cxcywh in patch coordinates.
        last_size: the last box's ``(w, h)`` in patch pixels.
        window: ``Tensor[A]`` cosine window (:func:`cosine_window`).
        options: penalty, window and smoothing settings.

    Returns:
        ``(index, box, lr)``: the chosen anchor, its proposal (``Tensor[4]``) and the size-smoothing rate.
    """
    w, h = boxes[:, 2].clamp(min=1e-6), boxes[:, 3].clamp(min=1e-6)
    lw, lh = float(last_size[0]), float(last_size[1])
    s_c = _change(
        _padded_size(w, h, options.context)
        / _padded_size(torch.tensor(lw), torch.tensor(lh), options.context)
    )
    r_c = _change((lw / lh) / (w / h))
    penalty = torch.exp(-(r_c * s_c - 1) * options.penalty_k)
    pscore = penalty * scores
    pscore = pscore * (1 - options.window_influence) + window.to(pscore) * options.window_influence
    best = int(pscore.argmax())
    lr = penalty[best] * scores[best] * options.size_lr
    return best, boxes[best], lr


class SiamRPNTracker:
    """Track one object with a :class:`~dcn.tasks.tracking.model.SiamRPN`.

    ``init(image, box)`` then ``update(image) -> box`` for every later frame; images are ``Tensor[3, H, W]``
    RGB floats in [0, 1], boxes ``Tensor[4]`` (x, y, w, h) in image pixels.
    """

    def __init__(self, model, options: TrackerOptions = TrackerOptions()) -> None:
        self.model = model
        self.options = options
        geometry = model.geometry
        self.template_size, self.search_size = geometry.template_size, geometry.search_size
        self.anchors = model.anchors.detach().cpu()
        self.window = cosine_window(geometry.score_size, model.num_anchors)
        self.state: Optional[Tensor] = None  # cxcywh in image pixels
        self.image_size: Tuple[int, int] = (0, 0)  # (W, H)
        self.template: Optional[Tensor] = None
        self.fill: Optional[Tensor] = None

    def _device(self) -> torch.device:
        return self.model.anchors.device

    @torch.no_grad()
    def init(self, image: Tensor, box: Tensor) -> None:
        """Start tracking the object in ``box`` (``Tensor[4]`` xywh) of ``image`` (``Tensor[3, H, W]``)."""
        box = torch.as_tensor(box, dtype=torch.float32).cpu()
        if box.shape != (4,) or not (box[2] > 0 and box[3] > 0):
            raise ValueError(f"init box must be (x, y, w, h) with positive size, got {box.tolist()}")
        self.state = xywh_to_cxcywh(box)
        self.image_size = (image.shape[-1], image.shape[-2])
        self.fill = image.mean(dim=(1, 2))  # mean padding, fixed for the sequence as in SiamFC/SiamRPN
        side = context_side(float(box[2]), float(box[3]), self.options.context)
        window = CropWindow(float(self.state[0]), float(self.state[1]), side, self.template_size)
        patch = crop_patch(image, window, self.fill)
        self.template = self.embed_template(patch)

    def embed_template(self, patch: Tensor) -> Optional[Tensor]:
        """Template features for ``patch`` (``Tensor[3, T, T]``); subclasses without a network may
        return None."""
        return self.model.template_features(patch[None].to(self._device()))

    def predict(self, patch: Tensor, window: CropWindow) -> Tuple[Tensor, Tensor]:
        """Object probabilities ``Tensor[A]`` and deltas ``Tensor[A, 4]`` for a search ``patch``
        (``Tensor[3, N, N]``).

        ``window`` is where the patch came from (unused here; a stand-in network may need it).
        """
        cls, loc = self.model.track(self.template, patch[None].to(self._device()))
        logits, deltas = flatten_head_outputs(cls, loc)
        return torch.sigmoid(logits[0]).cpu(), deltas[0].cpu()

    @torch.no_grad()
    def update(self, image: Tensor) -> Tensor:
        """The object's box (``Tensor[4]`` xywh, image pixels) in the next frame ``image``."""
        if self.state is None:
            raise RuntimeError("call init(image, box) before update(image)")
        window = search_window(self.state, self.template_size, self.search_size, self.options.context)
        patch = crop_patch(image, window, self.fill)
        scores, deltas = self.predict(patch, window)
        proposals = decode_boxes(deltas.float(), self.anchors)
        last = window.box_to_patch(self.state)
        _, box, lr = select_box(
            scores.float(), proposals, (float(last[2]), float(last[3])), self.window, self.options
        )
        box = window.box_to_image(box)
        lr = float(lr)
        w = float(self.state[2]) * (1 - lr) + float(box[2]) * lr
        h = float(self.state[3]) * (1 - lr) + float(box[3]) * lr
        width, height = self.image_size
        cx = min(max(float(box[0]), 0.0), float(width))
        cy = min(max(float(box[1]), 0.0), float(height))
        w = min(max(w, self.options.min_size), float(width))
        h = min(max(h, self.options.min_size), float(height))
        if not all(math.isfinite(v) for v in (cx, cy, w, h)):  # keep the last state rather than poison it
            return cxcywh_to_xywh(self.state)
        self.state = torch.tensor([cx, cy, w, h])
        return cxcywh_to_xywh(self.state)
