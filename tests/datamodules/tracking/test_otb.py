"""The OTB-layout reader on fabricated sequences: separators, two-object folders, late-starting ground
truth, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcn.datamodules.tracking.detection_pairs import read_tracking_root
from dcn.datamodules.tracking.otb import read_otb_root, read_otb_sequence


def write_otb(folder: Path, frames: int, lines, name: str = "groundtruth_rect.txt", first: int = 1) -> Path:
    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    for t in range(first, first + frames):
        Image.fromarray(np.full((24, 32, 3), 10 * t % 255, dtype=np.uint8)).save(images / f"{t:04d}.jpg")
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_comma_tab_and_space_separated_lines_in_one_file(tmp_path):
    write_otb(tmp_path / "Car", 3, ["1,2,10,8", "2\t3\t10\t8", "3 4  10 8"])
    (sequence,) = read_otb_sequence(tmp_path / "Car")
    assert sequence.name == "Car" and len(sequence) == 3 and sequence.frames[0].name == "0001.jpg"
    torch.testing.assert_close(sequence.boxes[2], torch.tensor([3.0, 4.0, 10.0, 8.0]))
    assert sequence.frame(1).shape == (3, 24, 32)


def test_two_annotated_objects_become_two_sequences_and_empty_files_are_skipped(tmp_path):
    folder = write_otb(tmp_path / "Jogging", 2, ["1,1,5,9", "2,1,5,9"], name="groundtruth_rect.1.txt")
    (folder / "groundtruth_rect.2.txt").write_text("9,2,4,8\n9,3,4,8\n")
    (folder / "groundtruth_rect.3.txt").write_text("")
    sequences = read_otb_sequence(folder)
    assert [s.name for s in sequences] == ["Jogging-1", "Jogging-2"]
    assert sequences[1].boxes[0].tolist() == [9.0, 2.0, 4.0, 8.0]


def test_shorter_ground_truth_covers_the_first_frames_or_the_known_late_start(tmp_path):
    (short,) = read_otb_sequence(write_otb(tmp_path / "Football1", 5, ["1,1,4,4"] * 3))
    assert [f.name for f in short.frames] == ["0001.jpg", "0002.jpg", "0003.jpg"]
    # OTB's David: 770 images, ground truth for frames 300..770 (here: a miniature with the same start).
    (david,) = read_otb_sequence(write_otb(tmp_path / "David", 302, ["1,1,4,4"] * 3))
    assert [f.name for f in david.frames] == ["0300.jpg", "0301.jpg", "0302.jpg"]


def test_frames_may_start_at_any_number(tmp_path):
    (sequence,) = read_otb_sequence(write_otb(tmp_path / "BlurCar1", 2, ["1,1,4,4"] * 2, first=247))
    assert sequence.frames[0].name == "0247.jpg"


def test_root_lists_sequence_folders_and_auto_layout_finds_otb(tmp_path):
    write_otb(tmp_path / "B", 2, ["1,1,4,4"] * 2)
    write_otb(tmp_path / "A", 2, ["1,1,4,4"] * 2)
    (tmp_path / "notes").mkdir()
    assert [s.name for s in read_otb_root(tmp_path)] == ["A", "B"]
    assert [s.name for s in read_tracking_root(tmp_path)] == ["A", "B"]
    assert [s.name for s in read_otb_root(tmp_path, ["B"])] == ["B"]
    with pytest.raises(ValueError, match=r"\['C'\] not found"):
        read_otb_root(tmp_path, ["C"])


@pytest.mark.parametrize(
    "lines, message",
    [
        (["1,1,4,4"] * 3, r"3 boxes but .* has 2 frames"),
        (["1,1,4"] * 2, r"line 1 has 3 numbers"),
        (["1,1,0,4"] * 2, r"line 1 is a box without area"),
    ],
)
def test_bad_ground_truth_is_named(tmp_path, lines, message):
    write_otb(tmp_path / "Bad", 2, lines)
    with pytest.raises(ValueError, match=message):
        read_otb_sequence(tmp_path / "Bad")


def test_missing_parts_are_named(tmp_path):
    (tmp_path / "NoImg").mkdir()
    with pytest.raises(FileNotFoundError, match="no img/ folder"):
        read_otb_sequence(tmp_path / "NoImg")
    write_otb(tmp_path / "NoTruth", 1, ["1,1,4,4"])
    (tmp_path / "NoTruth" / "groundtruth_rect.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no groundtruth_rect.txt"):
        read_otb_sequence(tmp_path / "NoTruth")
