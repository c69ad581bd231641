"""VOT accuracy / robustness and OPE success AUC / precision on hand-made overlap sequences."""

from __future__ import annotations

import math

import pytest
import torch

from dcn.tasks.tracking.metrics import precision_at, success_auc, success_curve, supervised_protocol


def run(table, skip=5, burnin=10):
    """The protocol over a tracker whose overlap at frame t is table[t] (whenever it was initialised)."""
    seen = []

    def initialize(t):
        seen.append(("init", t))

    def overlap(t):
        assert seen[-1][1] == t - 1  # frames are visited in order
        seen.append(("track", t))
        return table[t]

    return supervised_protocol(len(table), initialize, overlap, skip, burnin), seen


def test_no_failure_counts_frames_after_the_burn_in():
    table = [1.0] * 10 + [0.5] * 10  # frames 0..9 are the burn-in
    result, _ = run(table)
    assert result.num_failures == 0 and result.inits == [0]
    assert result.accuracy == pytest.approx(0.5)


def test_failure_reinitialises_five_frames_later_with_a_new_burn_in():
    table = [0.8] * 30
    table[12] = 0.0  # failure at 12 -> re-initialised at 17 -> frames 17..26 are burn-in
    table[27] = 0.2
    result, seen = run(table)
    assert result.failures == [12] and result.inits == [0, 17]
    assert ("track", 13) not in seen and ("init", 17) in seen
    counted = [t for t in range(30) if not math.isnan(result.overlaps[t])]
    assert counted == [10, 11, 27, 28, 29]
    assert result.accuracy == pytest.approx((0.8 * 4 + 0.2) / 5)


def test_a_failure_near_the_end_and_a_sequence_without_counted_frames():
    table = [0.5] * 8
    table[3] = 0.0
    result, _ = run(table)
    assert result.num_failures == 1 and result.inits == [0]  # 3 + 5 = 8: no frame left to re-initialise
    assert math.isnan(result.accuracy)


def test_repeated_failures_are_each_counted():
    table = [0.0] * 20  # fails on the first frame after every initialisation
    result, _ = run(table, skip=5)
    assert result.failures == [1, 7, 13, 19] and result.inits == [0, 6, 12, 18]


def test_success_curve_and_auc_on_hand_made_overlaps():
    overlaps = torch.tensor([0.0, 0.5, 1.0, 0.75])
    curve = success_curve(overlaps)
    assert curve.shape == (21,)
    assert curve[0] == pytest.approx(0.75)  # > 0: three of four
    assert curve[10] == pytest.approx(0.5)  # > 0.5: 1.0 and 0.75
    assert curve[20] == 0.0  # nothing is > 1
    # Each overlap o contributes #(thresholds < o) / 21: 0, 10, 20 and 15 thresholds.
    assert success_auc(overlaps) == pytest.approx((0 + 10 + 20 + 15) / 21 / 4)


def test_precision_at_20_pixels():
    errors = torch.tensor([0.0, 19.9, 20.0, 20.1, float("nan")])
    assert precision_at(errors, 20.0) == pytest.approx(3 / 5)


def test_empty_inputs_are_refused():
    with pytest.raises(ValueError):
        success_auc(torch.empty(0))
    with pytest.raises(ValueError, match="skip"):
        supervised_protocol(3, lambda t: None, lambda t: 1.0, skip=0)


def test_unknown_frames_are_neither_failures_nor_counted():
    table = [0.6] * 16
    table[11] = 0.0  # zero overlap, but the truth is unknown there (object absent)
    known = torch.ones(16, dtype=torch.bool)
    known[11] = False
    result = supervised_protocol(16, lambda t: None, lambda t: table[t], known=known)
    assert result.num_failures == 0
    assert [t for t in range(16) if not math.isnan(result.overlaps[t])] == [10, 12, 13, 14, 15]
    late = torch.ones(16, dtype=torch.bool)
    late[:3] = False  # no box before frame 3: the tracker starts there
    assert supervised_protocol(16, lambda t: None, lambda t: 0.6, known=late).inits == [3]
