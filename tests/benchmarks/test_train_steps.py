"""benchmarks/train_steps.py: the number of classes it computes from the config (it builds each task
without its datamodule) is the datamodule's, "plain" has no deformable part, and a task that cannot be
imported is a skip (a missing package) or a failure (a broken dcn module)."""

from __future__ import annotations

import dataclasses

import pytest
import train_steps
from hydra.utils import instantiate


@pytest.mark.parametrize("task", ["deeplab", "frcnn", "siamrpn"])
def test_num_classes_match_the_experiments_datamodule(task):
    spec = train_steps.TASKS[task]
    cfg = train_steps.compose(spec.overrides)
    datamodule = instantiate(cfg.data)  # constructed only: no data is generated before setup()
    assert spec.num_classes(cfg) == datamodule.num_classes
    assert datamodule.in_channels == 3  # train_steps builds every backbone for RGB


def test_the_plain_network_has_no_deformable_part():
    for name, spec in train_steps.TASKS.items():
        plain = train_steps.compose([*spec.overrides, *spec.plain])
        deform = train_steps.compose(spec.overrides)
        assert deform.backbone.deform.enabled and not plain.backbone.deform.enabled, name
        if "roi_pool" in deform.task:
            assert plain.task.roi_pool == "align", name


@pytest.mark.parametrize(
    "target, row, code",
    [
        # A package the machine lacks: the task is skipped, naming it, and the run still succeeds.
        ("not_installed_pkg.Task", "| siamrpn | skipped: not_installed_pkg is not installed", 0),
        # A dcn module that cannot be imported is a bug, not a missing package.
        ("dcn.tasks.no_such_module.Task", "| siamrpn | **FAILED**: ModuleNotFoundError", 1),
    ],
)
def test_a_task_that_cannot_be_imported(monkeypatch, capsys, target, row, code):
    spec = train_steps.TASKS["siamrpn"]
    broken = dataclasses.replace(spec, overrides=[*spec.overrides, f"task._target_={target}"])
    monkeypatch.setitem(train_steps.TASKS, "siamrpn", broken)
    assert train_steps.main(["--device", "cpu", "--tasks", "siamrpn", "--precision", "32-true"]) == code
    assert row in capsys.readouterr().out
