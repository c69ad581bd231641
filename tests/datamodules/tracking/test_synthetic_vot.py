"""The synthetic tracking generator: VOT layout on disk, boxes that fit the drawn target, caching."""

from __future__ import annotations

import pytest
import torch

from dcn.datamodules.synthetic.tracks import SyntheticTracksGenerator
from dcn.datamodules.tracking.synthetic import SyntheticVOTDataModule
from dcn.datamodules.tracking.vot import read_vot_root

TINY = dict(
    num_train=1, num_val=1, num_test=1, num_frames=6, image_size=(128, 96), distractors=(0, 0), noise=0.0
)


def test_writes_vot_roots_whose_boxes_enclose_the_target(tmp_path):
    generator = SyntheticTracksGenerator(**TINY)
    folder = SyntheticVOTDataModule.generate(tmp_path, generator)
    for split in ("train", "val", "test"):
        (seq,) = read_vot_root(folder / split)
        assert len(seq) == 6
        for t in range(len(seq)):
            # The target is drawn where its box says: its stripes and outline make sharp edges inside the
            # box, while the background (smooth, noise off, no distractors) has almost none outside.
            frame = seq.frame(t)
            sharp = (frame[:, :, 1:] - frame[:, :, :-1]).abs().sum(0) > 0.3  # [H, W - 1]
            x, y, w, h = seq.boxes[t].tolist()
            inside = torch.zeros_like(sharp)
            inside[max(int(y), 0) : int(y + h) + 1, max(int(x), 0) : int(x + w) + 1] = True
            assert sharp[inside].float().mean() > 0.05 and sharp[~inside].float().mean() < 0.005
    # Consecutive boxes move: it is a moving target.
    (seq,) = read_vot_root(folder / "train")
    assert not torch.equal(seq.boxes[0], seq.boxes[-1])


def test_polygon_ground_truth_is_read_back_as_boxes(tmp_path):
    generator = SyntheticTracksGenerator(**{**TINY, "groundtruth": "polygon"})
    folder = SyntheticVOTDataModule.generate(tmp_path, generator)
    line = (folder / "train" / "seq_0000" / "groundtruth.txt").read_text().splitlines()[0]
    assert len(line.split(",")) == 8
    (seq,) = read_vot_root(folder / "train")
    assert (seq.boxes[:, 2:] > 0).all()


def test_same_parameters_reuse_the_cache_and_new_ones_regenerate(tmp_path):
    generator = SyntheticTracksGenerator(**TINY)
    folder = SyntheticVOTDataModule.generate(tmp_path, generator)
    stamp = (folder / "generator.json").stat().st_mtime_ns
    assert SyntheticVOTDataModule.generate(tmp_path, SyntheticTracksGenerator(**TINY)) == folder
    assert (folder / "generator.json").stat().st_mtime_ns == stamp
    assert (
        SyntheticVOTDataModule.generated_folder(tmp_path, SyntheticTracksGenerator(**{**TINY, "seed": 1}))
        != folder
    )


def test_datamodule_yields_pairs_and_test_sequences(tmp_path):
    dm = SyntheticVOTDataModule(
        tmp_path,
        SyntheticTracksGenerator(**TINY),
        pairs={"template_size": 31, "search_size": 63},
        train_pairs=2,
        val_pairs=2,
        batch_size=2,
        max_test_frames=4,
    )
    assert (dm.in_channels, dm.num_classes) == (3, None)
    dm.prepare_data()
    dm.setup("fit")
    template, search, box, negative = next(iter(dm.val_dataloader()))
    assert template.shape == (2, 3, 31, 31) and box.shape == (2, 4)
    dm.setup("test")
    (seq,) = list(dm.test_dataloader())
    assert len(seq) == 4


def test_generator_arguments_are_checked():
    with pytest.raises(ValueError, match="groundtruth"):
        SyntheticTracksGenerator(groundtruth="mask")
    with pytest.raises(ValueError, match="object_size"):
        SyntheticTracksGenerator(object_size=(0.3, 0.6))
