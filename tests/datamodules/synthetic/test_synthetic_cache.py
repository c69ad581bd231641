"""The shared generated-dataset cache: folder naming, reuse, regeneration, leftovers and failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest

from dcn.datamodules.synthetic.cache import MARKER, cache_folder, ensure_generated, is_complete

KEY = {"generator_version": 1, "shapes": ["disc", "ring"], "seed": 0, "size_range": [0.1, 0.2]}


class CountingWriter:
    """A ``write`` callback that records its calls and leaves one data file."""

    def __init__(self, text: str = "data") -> None:
        self.text = text
        self.calls: List[Path] = []

    def __call__(self, folder: Path) -> None:
        assert folder.is_dir() and not any(folder.iterdir())  # handed an empty, existing folder
        self.calls.append(folder)
        (folder / "sub").mkdir()
        (folder / "sub" / "data.txt").write_text(self.text)


def hidden_leftovers(cache_dir: Path) -> List[Path]:
    return [p for p in cache_dir.iterdir() if p.name.startswith(".")]


def test_folder_name_is_the_prefix_and_the_key_hash_as_before_the_refactor(tmp_path):
    # "dccf4b205fcb" was printed by the pre-refactor synthetic_seg formula
    # sha256(json.dumps(key, sort_keys=True))[:12] for KEY: unchanged naming keeps existing caches valid.
    assert cache_folder(tmp_path, "shapes", KEY) == tmp_path / "shapes-dccf4b205fcb"
    # Key order does not matter; prefix and values do.
    assert cache_folder(tmp_path, "shapes", dict(reversed(list(KEY.items())))) == cache_folder(
        tmp_path, "shapes", KEY
    )
    assert cache_folder(tmp_path, "det", KEY).name == "det-dccf4b205fcb"
    assert cache_folder(tmp_path, "shapes", {**KEY, "seed": 1}) != cache_folder(tmp_path, "shapes", KEY)


def test_generates_once_then_reuses(tmp_path):
    writer = CountingWriter()
    folder = ensure_generated(tmp_path / "cache", "shapes", KEY, writer, "test data")
    assert folder == cache_folder(tmp_path / "cache", "shapes", KEY)  # cache_dir is created
    assert (folder / "sub" / "data.txt").read_text() == "data"
    assert json.loads((folder / MARKER).read_text()) == KEY and is_complete(folder, KEY)
    assert len(writer.calls) == 1 and writer.calls[0].parent == folder.parent  # a sibling, renamed
    stamp = (folder / MARKER).stat().st_mtime_ns
    assert ensure_generated(tmp_path / "cache", "shapes", KEY, writer, "test data") == folder
    assert len(writer.calls) == 1 and (folder / MARKER).stat().st_mtime_ns == stamp  # not rewritten
    assert not hidden_leftovers(tmp_path / "cache")


def test_a_changed_key_generates_a_new_folder_and_keeps_the_old(tmp_path):
    first = ensure_generated(tmp_path, "shapes", KEY, CountingWriter("a"), "a")
    second = ensure_generated(tmp_path, "shapes", {**KEY, "seed": 7}, CountingWriter("b"), "b")
    assert first != second
    assert (first / "sub" / "data.txt").read_text() == "a" and (
        second / "sub" / "data.txt"
    ).read_text() == "b"


@pytest.mark.parametrize("marker", [None, "{truncated", json.dumps({**KEY, "seed": 99})])
def test_an_incomplete_or_foreign_folder_is_replaced(tmp_path, marker):
    folder = cache_folder(tmp_path, "shapes", KEY)
    folder.mkdir()
    (folder / "stale.txt").write_text("from a killed run")
    if marker is not None:
        (folder / MARKER).write_text(marker)
    assert not is_complete(folder, KEY)
    writer = CountingWriter()
    assert ensure_generated(tmp_path, "shapes", KEY, writer, "test data") == folder
    assert len(writer.calls) == 1 and not (folder / "stale.txt").exists() and is_complete(folder, KEY)
    assert not hidden_leftovers(tmp_path)


def test_a_failing_writer_leaves_nothing_behind(tmp_path):
    def failing(folder: Path) -> None:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ensure_generated(tmp_path, "shapes", KEY, failing, "test data")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the temporary sibling


def test_a_concurrent_writer_that_finished_first_wins(tmp_path):
    folder = cache_folder(tmp_path, "shapes", KEY)

    def racing(tmp: Path) -> None:
        # While we write, "another process" completes the same folder.
        (tmp / "ours.txt").write_text("ours")
        folder.mkdir()
        (folder / "theirs.txt").write_text("theirs")
        (folder / MARKER).write_text(json.dumps(KEY))

    assert ensure_generated(tmp_path, "shapes", KEY, racing, "test data") == folder
    assert (folder / "theirs.txt").is_file() and not (folder / "ours.txt").exists()
    assert not hidden_leftovers(tmp_path)
