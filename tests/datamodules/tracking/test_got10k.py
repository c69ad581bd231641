"""The GOT-10k loader on a fabricated GOT-10k tree: splits, absent frames, the test split's single box."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_vot import write_sequence

from dcn.datamodules.tracking.got10k import GOT10kDataModule, read_got10k_sequence, read_got10k_split


def write_got10k(root: Path, frames=6):
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        names = []
        for i in range(count):
            name = f"GOT-10k_{split.capitalize()}_{i + 1:06d}"
            boxes = [(4 + t, 6, 12, 10) for t in range(frames)]
            lines = None
            if split == "test":
                lines = ["4,6,12,10"]  # GOT-10k gives only the first box of a test sequence
            elif i == 0:
                lines = [",".join(str(v) for v in b) for b in boxes]
                lines[3] = "0,0,0,0"  # the object is absent in frame 3
                (root / split / name).mkdir(parents=True)
                (root / split / name / "absence.label").write_text("0\n0\n0\n1\n0\n0\n")
            write_sequence(root / split / name, boxes, lines=lines)
            names.append(name)
        (root / split / "list.txt").write_text("\n".join(names) + "\n")
    return root


def test_absent_frames_are_unknown_not_errors(tmp_path):
    root = write_got10k(tmp_path)
    seq = read_got10k_split(root, "train")[0]
    assert seq.known.tolist() == [True, True, True, False, True, True]
    torch.testing.assert_close(seq.boxes[4], torch.tensor([8.0, 6.0, 12.0, 10.0]))


def test_a_zero_box_on_a_present_frame_is_an_error(tmp_path):
    root = write_got10k(tmp_path)
    folder = root / "train" / "GOT-10k_Train_000001"
    (folder / "absence.label").write_text("0\n" * 6)
    with pytest.raises(ValueError, match="GOT-10k_Train_000001.*line 4 is a box without area"):
        read_got10k_sequence(folder)


def test_test_split_has_only_its_first_box(tmp_path):
    seq = read_got10k_split(write_got10k(tmp_path), "test")[0]
    assert seq.known.tolist() == [True] + [False] * 5


def test_datamodule_trains_on_train_and_tests_on_val(tmp_path):
    root = write_got10k(tmp_path)
    dm = GOT10kDataModule(
        root, pairs={"template_size": 31, "search_size": 63}, batch_size=2, train_pairs=4, val_pairs=2
    )
    dm.setup("fit")
    assert [s.name for s in dm.sequences["train"]][0] == "GOT-10k_Train_000001"
    template, search, box, negative = next(iter(dm.train_dataloader()))
    assert search.shape == (2, 3, 63, 63)
    dm.setup("test")
    assert [s.name for s in dm.test_dataloader()] == ["GOT-10k_Val_000001", "GOT-10k_Val_000002"]


def test_missing_split_folder_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/, val/ and test/"):
        read_got10k_split(tmp_path, "train")
