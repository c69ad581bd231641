import json

import torch
from omegaconf import OmegaConf

from dcn.backbones import SeedNet
from dcn.results import RESULTS_FILE, RunRecord, parameter_counts


def _cfg():
    return OmegaConf.create(
        {
            "experiment_name": "exp",
            "seed": 3,
            "data": {"_target_": "dcn.datamodules.DigitsDataModule", "batch_size": 8},
            "backbone": {"_target_": "dcn.backbones.SeedNet", "deform": {"enabled": True}},
            "task": {"_target_": "dcn.tasks.classification.ClassificationTask"},
        }
    )


def test_parameter_counts_separate_the_offset_predictors():
    net = SeedNet(in_channels=1, deform={"enabled": True})
    net.layer1.requires_grad_(False)
    counts = parameter_counts(net)
    assert counts["offset_predictor"] == 128 * 18 * 9 + 18  # one 3x3 conv 128 -> 2 * 9 offsets, with bias
    assert counts["total"] == sum(p.numel() for p in net.parameters())
    assert counts["trainable"] == counts["total"] - sum(p.numel() for p in net.layer1.parameters())
    assert parameter_counts(SeedNet(in_channels=1, deform={"enabled": False}))["offset_predictor"] == 0
    assert counts["roi_offset_head"] == 0


def test_parameter_counts_include_the_deformable_roi_pooling_offset_head():
    from dcn.ops import MultiScaleDeformRoIPool

    pool = MultiScaleDeformRoIPool(["0"], 2, 2, in_channels=3, hidden_channels=5)
    # FC 3*2*2 -> 5, FC 5 -> 5, FC 5 -> 2*2*2 offsets, each with bias.
    assert parameter_counts(pool)["roi_offset_head"] == (12 * 5 + 5) + (5 * 5 + 5) + (5 * 8 + 8)


def test_record_goes_from_running_to_failed_with_the_error(tmp_path):
    record = RunRecord(tmp_path, _cfg())
    record.write()
    data = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert data["status"] == "running" and data["timing"]["finished_at"] is None
    # Outside Hydra the names come from the _target_ classes.
    assert (data["backbone"], data["data"], data["task"]) == (
        "SeedNet",
        "DigitsDataModule",
        "ClassificationTask",
    )
    assert (
        data["deform"] == {"enabled": True} and data["seed"] == 3 and data["data_config"] == {"batch_size": 8}
    )
    try:
        raise ValueError("data.batch_size must be >= 1")
    except ValueError as error:
        record.finish("failed", error)
    data = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert data["status"] == "failed"
    assert data["error"]["type"] == "ValueError" and "batch_size" in data["error"]["message"]
    assert "Traceback" in data["error"]["traceback"]
    assert data["timing"]["wall_s"] >= 0
    assert "error" in record.summary() and str(tmp_path) in record.summary()


def test_tensors_become_numbers_and_the_summary_shows_metrics(tmp_path):
    record = RunRecord(tmp_path, _cfg())
    record.update(metrics={"test/acc": torch.tensor(0.5)}, timing={"fit_s": 1.0})
    record.finish("completed")
    data = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert data["metrics"] == {"test/acc": 0.5} and data["timing"]["fit_s"] == 1.0
    assert "test/acc" in record.summary() and "0.5000" in record.summary()


def test_an_earlier_runs_results_in_a_reused_directory_are_kept(tmp_path):
    (tmp_path / RESULTS_FILE).write_text('{"status": "completed"}')
    (tmp_path / "results.1.json").write_text('{"status": "older"}')
    RunRecord(tmp_path, _cfg()).finish("failed", RuntimeError("boom"))
    assert json.loads((tmp_path / "results.2.json").read_text()) == {"status": "completed"}
    assert json.loads((tmp_path / "results.1.json").read_text()) == {"status": "older"}
    assert json.loads((tmp_path / RESULTS_FILE).read_text())["status"] == "failed"
