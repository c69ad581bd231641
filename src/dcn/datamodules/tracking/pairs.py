"""Training pairs for Siamese trackers: a template patch and a search patch from one sequence.

Sampling (:class:`PairSampling`): a sequence is drawn (uniformly), then a template frame and a search
frame at most ``frame_range`` frames apart (both with a known box). With probability ``negative`` the
search patch comes from another sequence instead (a negative pair: "the object is not here").

Crops (:mod:`dcn.geometry.crops`, context 0.5, mean padding): the template is centred on
its box; the search window is shifted by up to ``shift`` patch pixels along each axis and rescaled by a
factor in ``[exp(-scale), exp(scale)]``, so the target appears off-centre and at varying size. Both
patches are flipped horizontally together with probability ``flip``; the search patch is blurred with
probability ``blur``.

Items: ``(template Tensor[3, T, T], search Tensor[3, N, N], box Tensor[4], negative Tensor[] bool)``,
patches RGB in [0, 1], ``box`` the search frame's target (cxcywh, search-patch pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import Tensor
from torch.utils.data import Dataset

from dcn.datamodules.tracking.sequence import TrackingSequence
from dcn.geometry.boxes import xywh_to_cxcywh
from dcn.geometry.crops import CropWindow, context_side, crop_patch, template_window

__all__ = ["PairSampling", "SequenceDataset", "TrackingPairDataset"]


@dataclass(frozen=True)
class PairSampling:
    """Pair sampling and augmentation settings (config ``data.pairs``)."""

    template_size: int = 127  # template patch side, pixels
    search_size: int = 255  # search patch side, pixels (> template_size)
    context: float = 0.5  # crop margin p = context * (w + h) around the box
    frame_range: int = 100  # most frames between the template and the search frame
    shift: float = 64.0  # largest shift of the search window along each axis, patch pixels
    scale: float = 0.18  # search window rescaled by a factor in [exp(-scale), exp(scale)]
    flip: float = 0.0  # probability of flipping both patches horizontally
    blur: float = 0.2  # probability of blurring the search patch
    negative: float = 0.2  # probability of a search patch from another sequence

    def __post_init__(self) -> None:
        for key in ("flip", "blur", "negative"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"data.pairs.{key} is a probability in [0, 1], got {getattr(self, key)}")
        if self.frame_range < 0 or self.shift < 0 or self.scale < 0 or self.context < 0:
            raise ValueError("data.pairs.frame_range, shift, scale and context must be >= 0")
        if self.search_size <= self.template_size:
            raise ValueError(
                f"data.pairs.search_size ({self.search_size}) must exceed "
                f"template_size ({self.template_size})"
            )


class TrackingPairDataset(Dataset):
    """``length`` random pairs from ``sequences`` (see the module docstring).

    Args:
        sequences: where pairs come from (each needs a known frame).
        length: items per epoch.
        sampling: :class:`PairSampling`.
        seed: None draws fresh pairs each time (from torch's RNG, so ``seed_everything`` makes runs
            repeatable); an int fixes item i to the same pair forever (validation).
    """

    def __init__(
        self,
        sequences: Sequence[TrackingSequence],
        length: int,
        sampling: PairSampling,
        seed: Optional[int] = None,
    ) -> None:
        self.sequences = [s for s in sequences if bool(s.known.any())]
        if not self.sequences:
            raise ValueError("TrackingPairDataset needs at least one sequence with a known box")
        if length < 1:
            raise ValueError(f"pairs per epoch must be >= 1, got {length}")
        self.length, self.sampling, self.seed = length, sampling, seed

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        return np.random.default_rng([self.seed, index])

    def _pick_frames(self, rng: np.random.Generator) -> Tuple[TrackingSequence, int, int]:
        sequence = self.sequences[int(rng.integers(len(self.sequences)))]
        known = sequence.known.nonzero().flatten().numpy()
        t = int(rng.choice(known))
        near = known[np.abs(known - t) <= self.sampling.frame_range]
        return sequence, t, int(rng.choice(near))

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        rng = self._rng(index)
        s = self.sampling
        sequence, t_template, t_search = self._pick_frames(rng)
        negative = len(self.sequences) > 1 and rng.random() < s.negative
        search_sequence = sequence
        if negative:
            others = [q for q in self.sequences if q is not sequence]
            search_sequence = others[int(rng.integers(len(others)))]
            known = search_sequence.known.nonzero().flatten().numpy()
            t_search = int(rng.choice(known))

        box_z = xywh_to_cxcywh(sequence.boxes[t_template])
        template = crop_patch(sequence.frame(t_template), template_window(box_z, s.template_size, s.context))

        box_x = xywh_to_cxcywh(search_sequence.boxes[t_search])
        side = context_side(float(box_x[2]), float(box_x[3]), s.context) * s.search_size / s.template_size
        side *= math.exp(rng.uniform(-s.scale, s.scale))
        scale = s.search_size / side
        dx, dy = rng.uniform(-s.shift, s.shift, size=2)
        # Moving the window by -d (image pixels d / scale) puts the target d patch pixels off-centre.
        window = CropWindow(float(box_x[0]) - dx / scale, float(box_x[1]) - dy / scale, side, s.search_size)
        search = crop_patch(search_sequence.frame(t_search), window)
        box = window.box_to_patch(box_x)

        if rng.random() < s.flip:
            template, search = template.flip(-1), search.flip(-1)
            box = torch.stack([s.search_size - box[0], box[1], box[2], box[3]])
        if rng.random() < s.blur:
            sigma = float(rng.uniform(0.5, 1.5))
            search = TF.gaussian_blur(search, kernel_size=5, sigma=sigma)
        return template.clamp_(0, 1), search.clamp_(0, 1), box.float(), torch.tensor(bool(negative))


class SequenceDataset(Dataset):
    """Whole sequences, one per item (for the test stage: the task runs the tracker over each)."""

    def __init__(self, sequences: Sequence[TrackingSequence]) -> None:
        self.sequences: List[TrackingSequence] = list(sequences)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> TrackingSequence:
        return self.sequences[index]
