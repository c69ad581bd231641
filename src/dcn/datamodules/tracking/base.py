"""What every tracking datamodule shares: pair loaders for train / val and sequence loaders for test.

Batches:
    train / val: ``(template Tensor[B, 3, T, T], search Tensor[B, 3, N, N], box Tensor[B, 4], negative
    Tensor[B] bool)`` (see :mod:`dcn.datamodules.tracking.pairs`);
    test: one :class:`~dcn.datamodules.tracking.sequence.TrackingSequence` per batch.

``in_channels`` is 3 (RGB) and ``num_classes`` None (a tracker is class-agnostic): ``train.py`` hands
them to the backbone and the task as for every task.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import lightning as L
from torch.utils.data import DataLoader

from dcn.datamodules.loaders import LoaderOptions
from dcn.datamodules.tracking.pairs import PairSampling, SequenceDataset, TrackingPairDataset
from dcn.datamodules.tracking.sequence import TrackingSequence

__all__ = ["TrackingDataModule"]


def _identity(batch: Any) -> Any:
    return batch


class TrackingDataModule(LoaderOptions, L.LightningDataModule):
    """Base class: subclasses implement ``load_split(split) -> list[TrackingSequence]`` for
    ``"train"``, ``"val"`` and ``"test"``.

    Args:
        pairs: :class:`PairSampling` or a mapping of its fields.
        train_pairs, val_pairs: pairs per training epoch / in the (fixed) validation set.
        max_test_frames: test on the first N frames of each sequence (None: all).
        max_test_sequences: test on the first N test sequences (None: all).
        batch_size, num_workers, pin_memory: DataLoader settings for pairs.
        val_seed: fixes the validation pairs.
    """

    in_channels = 3
    num_classes = None

    def __init__(
        self,
        pairs: Any = None,
        train_pairs: int = 2000,
        val_pairs: int = 200,
        max_test_frames: Optional[int] = None,
        max_test_sequences: Optional[int] = None,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(pairs, Mapping) or hasattr(pairs, "items"):
            pairs = PairSampling(**dict(pairs.items()))
        self.pairs = pairs if pairs is not None else PairSampling()
        if not isinstance(self.pairs, PairSampling):
            raise TypeError(
                f"data.pairs must be a mapping of PairSampling fields, got {type(pairs).__name__}"
            )
        for key, value in (("max_test_frames", max_test_frames), ("max_test_sequences", max_test_sequences)):
            if value is not None and value < 1:
                raise ValueError(f"data.{key} must be >= 1 or null, got {value}")
        self.train_pairs, self.val_pairs = train_pairs, val_pairs
        self.max_test_frames, self.max_test_sequences = max_test_frames, max_test_sequences
        self.set_loader_options(batch_size, num_workers=num_workers, pin_memory=pin_memory)
        self.val_seed = val_seed
        self.sequences: Dict[str, List[TrackingSequence]] = {}

    def load_split(self, split: str) -> List[TrackingSequence]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage, ("train", "val", "test")
        )
        for split in wanted:
            if split not in self.sequences:
                self.sequences[split] = self.load_split(split)

    def _pairs_loader(self, split: str, length: int, seed: Optional[int], shuffle: bool) -> DataLoader:
        if not self.sequences.get(split):
            raise ValueError(f"{type(self).__name__}: the {split} split has no sequence")
        dataset = TrackingPairDataset(self.sequences[split], length, self.pairs, seed)
        return self.split_loader(dataset, split, self.batch_size, shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._pairs_loader("train", self.train_pairs, None, shuffle=False)  # items are random already

    def val_dataloader(self) -> DataLoader:
        return self._pairs_loader("val", self.val_pairs, self.val_seed, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        sequences = self.sequences.get("test") or []
        if not sequences:
            raise ValueError(f"{type(self).__name__}: the test split has no sequence")
        sequences = [s.truncated(self.max_test_frames) for s in sequences[: self.max_test_sequences]]
        return DataLoader(SequenceDataset(sequences), batch_size=None, collate_fn=_identity, num_workers=0)
