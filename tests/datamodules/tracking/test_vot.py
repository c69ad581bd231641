"""The VOT loader on fabricated VOT-layout trees: boxes, polygons, splits, pairs and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcn.datamodules.tracking.pairs import PairSampling, TrackingPairDataset
from dcn.datamodules.tracking.vot import VOTDataModule, read_vot_root, read_vot_sequence
from dcn.geometry.boxes import box_overlap, xywh_to_cxcywh


def write_sequence(folder: Path, boxes, size=(64, 48), color_dir=False, lines=None, sep=","):
    """Frames with a white rectangle at each (integer) xywh box, and groundtruth.txt."""
    frames = folder / "color" if color_dir else folder
    frames.mkdir(parents=True, exist_ok=True)
    for t, (x, y, w, h) in enumerate(boxes):
        pixels = np.full((size[1], size[0], 3), 40, dtype=np.uint8)
        pixels[int(y) : int(y + h), int(x) : int(x + w)] = 255
        Image.fromarray(pixels).save(frames / f"{t + 1:08d}.png")
    if lines is None:
        lines = [sep.join(str(v) for v in box) for box in boxes]
    (folder / "groundtruth.txt").write_text("\n".join(lines) + "\n")


def write_root(root: Path, count=5, frames=6):
    names = []
    for i in range(count):
        name = f"seq{i}"
        write_sequence(
            root / name, [(8 + 2 * t, 10 + t, 16, 12) for t in range(frames)], color_dir=i % 2 == 1
        )
        names.append(name)
    (root / "list.txt").write_text("\n".join(names) + "\n")
    return root


def test_reads_boxes_frames_and_color_subfolders(tmp_path):
    root = write_root(tmp_path)
    sequences = read_vot_root(root)
    assert [s.name for s in sequences] == [f"seq{i}" for i in range(5)]
    seq = sequences[1]  # frames in color/
    assert len(seq) == 6 and seq.frames[0].parent.name == "color"
    torch.testing.assert_close(seq.boxes[2], torch.tensor([12.0, 12.0, 16.0, 12.0]))
    frame = seq.frame(2)
    assert frame.shape == (3, 48, 64) and frame.dtype == torch.float32
    assert frame[:, 12:24, 12:28].min() == 1.0 and frame[:, 0, 0].max() < 0.2


def test_polygon_lines_become_axis_aligned_boxes(tmp_path):
    lines = ["8,10,24,10,24,22,8,22", "10 9 26 11 24 23 8 21"]  # commas or spaces
    write_sequence(tmp_path / "p", [(8, 10, 16, 12)] * 2, lines=lines)
    seq = read_vot_sequence(tmp_path / "p")
    torch.testing.assert_close(seq.boxes, torch.tensor([[8.0, 10.0, 16.0, 12.0], [8.0, 9.0, 18.0, 14.0]]))


@pytest.mark.parametrize(
    "lines, message",
    [
        (["1,2,3,4"], "1 lines but the sequence has 2 frames"),
        (["1,2,3,4", "1,2,3"], "line 2 has 3 numbers"),
        (["1,2,3,4", "1,2,0,4"], "line 2 is a box without area"),
        (["1,2,3,4", "a,b,c,d"], "line 2 is not numbers"),
    ],
)
def test_bad_ground_truth_names_the_sequence_and_line(tmp_path, lines, message):
    write_sequence(tmp_path / "bad", [(1, 2, 3, 4)] * 2, lines=lines)
    with pytest.raises(ValueError, match=message) as info:
        read_vot_sequence(tmp_path / "bad")
    assert "sequence bad" in str(info.value)


def test_missing_list_txt_says_what_a_root_holds(tmp_path):
    with pytest.raises(FileNotFoundError, match="list.txt"):
        read_vot_root(tmp_path)


def test_split_is_by_sequence_disjoint_and_seeded(tmp_path):
    root = write_root(tmp_path)
    dm = VOTDataModule(root, val_fraction=0.2, test_fraction=0.2, batch_size=2)
    split = dm.split_names()
    assert len(split["val"]) == 1 and len(split["test"]) == 1 and len(split["train"]) == 3
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    assert VOTDataModule(root).split_names() == split
    chosen = VOTDataModule(root, val_sequences=["seq0"], test_sequences=["seq1", "seq2"]).split_names()
    assert chosen == {"train": ["seq3", "seq4"], "val": ["seq0"], "test": ["seq1", "seq2"]}


def test_pairs_put_the_box_where_the_object_is_in_the_search_patch(tmp_path):
    root = write_root(tmp_path, count=2, frames=6)
    sampling = PairSampling(template_size=31, search_size=63, shift=8.0, scale=0.1, blur=0.0, negative=0.0)
    dataset = TrackingPairDataset(read_vot_root(root), length=8, sampling=sampling, seed=3)
    for i in range(len(dataset)):
        template, search, box, negative = dataset[i]
        assert template.shape == (3, 31, 31) and search.shape == (3, 63, 63) and not negative
        # The white rectangle, thresholded, has the box's position and size (up to resampling blur).
        mask = search.mean(0) > 0.6
        ys, xs = mask.nonzero(as_tuple=True)
        found = torch.tensor(
            [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()], dtype=torch.float32
        )
        assert float(box_overlap(xywh_to_cxcywh(found), box)) > 0.8
    again = TrackingPairDataset(read_vot_root(root), length=8, sampling=sampling, seed=3)
    torch.testing.assert_close(again[5][1], dataset[5][1])  # a seeded item is always the same pair


def test_negative_pairs_and_a_datamodule_batch(tmp_path):
    root = write_root(tmp_path, count=5, frames=6)
    dm = VOTDataModule(
        root,
        pairs={"template_size": 31, "search_size": 63, "negative": 1.0},
        batch_size=3,
        train_pairs=3,
        val_pairs=3,
    )
    dm.setup("fit")
    template, search, box, negative = next(iter(dm.train_dataloader()))
    assert template.shape == (3, 3, 31, 31) and search.shape == (3, 3, 63, 63) and box.shape == (3, 4)
    assert negative.all()
    dm.setup("test")
    sequences = list(dm.test_dataloader())
    assert [s.name for s in sequences] == dm.split_names()["test"]


@pytest.mark.parametrize("line", ["nan,10,16,12", "8,10,inf,12", "8,-inf,16,12", "1,2,3,4,5,6,nan,8"])
def test_non_finite_ground_truth_is_refused_with_sequence_and_line(tmp_path, line):
    boxes = [(8, 10, 16, 12)] * 4
    lines = [",".join(map(str, b)) for b in boxes]
    lines[2] = line
    write_sequence(tmp_path / "bag", boxes, lines=lines)
    with pytest.raises(ValueError, match=r"sequence bag: .*groundtruth.txt line 3 holds a non-finite value"):
        read_vot_sequence(tmp_path / "bag")


def test_all_nan_line_marks_the_object_absent(tmp_path):
    boxes = [(8, 10, 16, 12)] * 4
    lines = [",".join(map(str, b)) for b in boxes]
    lines[2] = "nan,nan,nan,nan"
    write_sequence(tmp_path / "bag", boxes, lines=lines)
    sequence = read_vot_sequence(tmp_path / "bag")
    assert sequence.known.tolist() == [True, True, False, True]
    assert torch.isfinite(sequence.boxes).all() and sequence.boxes[2].tolist() == [0, 0, 0, 0]
    lines[0] = "nan,nan,nan,nan"
    write_sequence(tmp_path / "first", boxes, lines=lines)
    with pytest.raises(ValueError, match="sequence first: the object's box in the first frame is unknown"):
        read_vot_sequence(tmp_path / "first")
