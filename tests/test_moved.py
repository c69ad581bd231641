"""Old module paths (dcn._moved): they import the module at its new path with a FutureWarning that
names it; a split module's import names where each name went; nothing else is affected."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import dcn
from dcn._moved import MOVED_MODULES, SPLIT_MODULES

SRC = Path(dcn.__file__).parent


def _file_of(module: str) -> Path:
    return SRC.parent.joinpath(*module.split("."))


@pytest.mark.parametrize("old,new", sorted(MOVED_MODULES.items()))
def test_an_old_path_gives_the_new_module_with_a_warning(old, new):
    # The old path is not a module any more (the table never shadows a real one) ...
    assert not _file_of(old).with_suffix(".py").exists() and not _file_of(old).is_dir()
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=rf"{old} moved to {new}; import from there"):
        moved = importlib.import_module(old)
    # ... and gives the very module at the new path, so classes compare equal and isinstance works.
    assert moved is importlib.import_module(new)


def test_from_import_of_an_old_path_in_a_fresh_interpreter():
    code = (
        "import warnings; warnings.simplefilter('error', FutureWarning)\n"
        "try:\n"
        "    from dcn.datamodules.voc_det import VOCDetDataModule\n"
        "except FutureWarning as w:\n"
        "    print('warned:', w)\n"
        "from dcn.datamodules import VOCDetDataModule\n"
        "print(VOCDetDataModule.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "warned: dcn.datamodules.voc_det moved to dcn.datamodules.detection.voc" in out
    assert out.strip().endswith("dcn.datamodules.detection.voc")


@pytest.mark.parametrize("old", sorted(SPLIT_MODULES))
def test_a_split_module_says_where_its_names_went(old):
    with pytest.raises(ModuleNotFoundError, match=rf"{old} was split: publish_figure is in dcn.figures"):
        importlib.import_module(old)


def test_other_missing_modules_fail_as_usual():
    with pytest.raises(ModuleNotFoundError, match="No module named 'dcn.datamodules.no_such_thing'"):
        importlib.import_module("dcn.datamodules.no_such_thing")


def test_a_renamed_callback_names_its_successor():
    import dcn.callbacks

    with pytest.raises(
        AttributeError, match="SamplePredictions was replaced by dcn.callbacks.ValidationPictures"
    ):
        dcn.callbacks.SamplePredictions  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        dcn.callbacks.Nope  # noqa: B018
