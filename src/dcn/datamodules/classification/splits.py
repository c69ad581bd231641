"""Seeded, stratified index splits: the same seed gives the same split on every machine."""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["stratified_split"]


def stratified_split(
    targets: np.ndarray, holdout_sizes: Tuple[int, ...], seed: int
) -> Tuple[np.ndarray, ...]:
    """Split sample indices into a remainder and held-out parts, keeping class proportions.

    Args:
        targets: array[N] of class labels.
        holdout_sizes: number of samples in each held-out part, e.g. ``(n_val, n_test)``.
        seed: split seed (independent of the training seed, so a seed sweep evaluates on one split).

    Returns:
        ``(remainder, *held_out)``: sorted int64 index arrays, disjoint and covering ``range(N)``.
    """
    targets = np.asarray(targets)
    n = len(targets)
    n_classes = len(np.unique(targets))
    if sum(holdout_sizes) >= n:
        raise ValueError(f"held-out sizes {list(holdout_sizes)} leave no training samples out of {n}")
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 (see digits.py: imported when used)

    rng = np.random.RandomState(seed)
    remainder = np.arange(n)
    parts = []
    for size in holdout_sizes:
        if size < n_classes:
            raise ValueError(
                f"a held-out split of {size} samples cannot hold all {n_classes} classes; make it larger"
            )
        remainder, held = train_test_split(
            remainder, test_size=size, stratify=targets[remainder], random_state=rng
        )
        parts.append(np.sort(held))
    return (np.sort(remainder), *parts)
