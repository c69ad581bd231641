"""dcn.report: grouping, statistics, plots and the failed-run list, on a fabricated multirun
directory and (slow) on a real sweep of train.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from scipy import stats
from train_runs import TINY_DIGITS, run_train_py

from dcn import report

# Test accuracies per (deform, seed): fabricated, with the deformable variant clearly better.
ACC = {
    (False, 0): 0.80,
    (False, 1): 0.82,
    (False, 2): 0.78,
    (True, 0): 0.90,
    (True, 1): 0.91,
    (True, 2): 0.86,
}


def _config(run_dir: Path, deform: bool, seed: int, lr: float = 0.003) -> dict:
    return {
        "seed": seed,
        "experiment_name": "default",
        "backbone": {"_target_": "dcn.backbones.SeedNet", "deform": {"enabled": deform, "stages": [4]}},
        "task": {"optimizer": {"lr": lr}},
        "paths": {"output_dir": str(run_dir)},
        "callbacks": {"model_checkpoint": {"dirpath": str(run_dir / "checkpoints")}},
        "logger": {"csv": {"save_dir": str(run_dir), "name": "csv"}, "wandb": {"name": f"seed_net-s{seed}"}},
        "trainer": {"default_root_dir": str(run_dir), "max_epochs": 3},
    }


def write_run(run_dir: Path, deform: bool, seed: int, status: str = "completed", lr: float = 0.003) -> None:
    """A run directory as train.py leaves it: .hydra/, results.json and csv/metrics.csv."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "csv").mkdir()
    acc = ACC[(deform, seed)]
    rows = ["epoch,step,val/acc,val/loss,train/loss_epoch"]
    for epoch in range(3):
        rows.append(f"{epoch},{10 * epoch + 9},{acc - 0.1 * (2 - epoch)},{1.0 - acc + 0.1 * (2 - epoch)},")
        rows.append(f"{epoch},{10 * epoch + 9},,,{1.5 - 0.2 * epoch}")
    (run_dir / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    record = {
        "status": status,
        "error": {"type": "RuntimeError", "message": "CUDA out of memory"} if status == "failed" else None,
        "run_dir": str(run_dir),
        "seed": seed,
        "deform": {"enabled": deform, "stages": [4]},
        "metrics": {"test/acc": acc, "test/loss": 1 - acc} if status == "completed" else {},
        "metrics_csv": str(run_dir / "csv" / "metrics.csv"),
        "parameters": {"total": 262876 if deform else 242122},
        "timing": {"wall_s": 100.0 + 10 * deform},
        "config": _config(run_dir, deform, seed, lr),
    }
    (run_dir / "results.json").write_text(json.dumps(record))


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """6 completed runs (deform off/on x seeds 0-2), one failed, one that never wrote results.json."""
    root = tmp_path / "multirun"
    for i, (deform, seed) in enumerate(sorted(ACC)):
        write_run(root / str(i), deform, seed)
    write_run(root / "6", True, 0, status="failed")
    (root / "7" / ".hydra").mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_groups_by_config_difference_except_seed_and_run_paths(multirun: Path) -> None:
    result = report.build_report(report.find_runs([multirun]))
    assert result.differing_keys == ["backbone.deform.enabled"]
    assert [v.label for v in result.variants] == [
        "backbone.deform.enabled=false",
        "backbone.deform.enabled=true",
    ]
    assert [len(v.runs) for v in result.variants] == [3, 4]  # the failed run belongs to its variant
    assert [len(v.completed) for v in result.variants] == [3, 3]
    assert result.plain_of == {1: 0}
    assert result.names == ["deform off", "deform on"]


def test_difference_and_interval_match_scipy_welch(multirun: Path) -> None:
    result = report.build_report(report.find_runs([multirun]))
    on = [ACC[(True, s)] for s in range(3)]
    off = [ACC[(False, s)] for s in range(3)]
    comparison = result.comparisons[(1, "test/acc")]
    assert comparison.difference == pytest.approx(sum(on) / 3 - sum(off) / 3)
    expected = stats.ttest_ind(on, off, equal_var=False).confidence_interval(0.95)
    assert (comparison.low, comparison.high) == pytest.approx((expected.low, expected.high))
    assert comparison.low > 0  # these fabricated numbers separate the variants


def test_welch_interval_edge_cases() -> None:
    diff, low, high = report.welch_interval([1.0], [0.5, 0.7])
    assert diff == pytest.approx(0.4) and math.isnan(low) and math.isnan(high)
    assert report.welch_interval([1.0, 1.0], [0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_markdown_lists_stats_plots_and_problem_runs(multirun: Path) -> None:
    assert report.main([str(multirun)]) == 0
    out = multirun / "report"
    text = (out / "report.md").read_text()
    mean_on = sum(ACC[(True, s)] for s in range(3)) / 3
    assert f"{mean_on:.4f} ± " in text
    assert "| backbone.deform.enabled=true | on | 3/4 |" in text
    assert "262,876" in text and "110.0" in text  # params, wall time
    assert "CUDA out of memory" in text  # the failed run, with its error
    assert f"`{(multirun / '7').resolve()}` (unfinished): no results.json" in text
    for name in (
        "delta_test_acc.png",
        "delta_test_loss.png",
        "val_acc.png",
        "val_loss.png",
        "test_acc.png",
        "test_loss.png",
    ):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
        assert f"]({name})" in text
    for name in ("delta_test_acc.pdf", "delta_test_loss.pdf"):  # the answer of the sweep, also for papers
        assert (out / name).read_bytes().startswith(b"%PDF"), name
        assert f"]({name})" in text
    assert "| deform on | backbone.deform.enabled=true | on |" in text  # readable name, then the config


def test_each_deformable_variant_is_compared_with_its_own_plain_twin(tmp_path: Path) -> None:
    for i, (deform, seed) in enumerate(sorted(ACC)):
        write_run(tmp_path / "a" / str(i), deform, seed, lr=0.01)
        write_run(tmp_path / "b" / str(i), deform, seed, lr=0.001)
    result = report.build_report(report.find_runs([tmp_path / "a", tmp_path / "b"]))
    labels = [v.label for v in result.variants]
    assert len(labels) == 4
    for i, j in result.plain_of.items():
        assert (
            dict(result.variants[i].key)["task.optimizer.lr"]
            == dict(result.variants[j].key)["task.optimizer.lr"]
        )
        assert result.variants[j].deform_enabled is False
    assert result.names == [
        "lr=0.001, deform off",
        "lr=0.001, deform on",
        "lr=0.01, deform off",
        "lr=0.01, deform on",
    ]
    # Two plain variants: each row of the difference plot says which one it is compared with.
    fig = report.difference_figure(result, "test/acc")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [
        "lr=0.001, deform on\nvs lr=0.001, deform off",
        "lr=0.01, deform on\nvs lr=0.01, deform off",
    ]
    plt.close(fig)


def test_detection_ablation_compares_every_deformable_variant_with_the_plain_model(tmp_path: Path) -> None:
    # The four-way ablation: deform conv off/on x RoI pooling align/deform. Each of the three deformable
    # variants is compared with (off, align), the plain Faster R-CNN, as in the DCN paper's table.
    for i, (deform, seed) in enumerate(sorted(ACC)):
        for roi_pool in ("align", "deform"):
            run_dir = tmp_path / roi_pool / str(i)
            write_run(run_dir, deform, seed)
            record = json.loads((run_dir / "results.json").read_text())
            record["config"]["task"]["roi_pool"] = roi_pool
            (run_dir / "results.json").write_text(json.dumps(record))
    result = report.build_report(report.find_runs([tmp_path / "align", tmp_path / "deform"]))
    keys = [dict(v.key) for v in result.variants]
    assert len(keys) == 4
    plain = [
        i for i, k in enumerate(keys) if k == {"backbone.deform.enabled": "false", "task.roi_pool": "align"}
    ]
    assert len(plain) == 1
    assert result.variants[plain[0]].deform_enabled is False
    assert sorted(result.plain_of) == sorted(set(range(4)) - set(plain))
    assert set(result.plain_of.values()) == set(plain)
    names = {(k["backbone.deform.enabled"], k["task.roi_pool"]): n for k, n in zip(keys, result.names)}
    assert names == {
        ("false", "align"): "deform off",
        ("true", "align"): "deform conv",
        ("false", "deform"): "deform RoI pooling",
        ("true", "deform"): "deform conv + RoI pooling",
    }


def _texts(fig) -> list:
    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


def test_plots_name_variants_for_people_and_count_epochs_in_whole_numbers(multirun: Path) -> None:
    result = report.build_report(report.find_runs([multirun]))
    curves = {id(run): report.validation_curves(run) for v in result.variants for run in v.completed}
    val = report.validation_figure(result, "val/acc", curves)
    seeds = report.per_seed_figure(result, "test/acc")
    delta = report.difference_figure(result, "test/acc")
    try:
        assert [t.get_text() for t in val.axes[0].get_legend().get_texts()] == [
            "deform off (n=3)",
            "deform on (n=3)",
        ]
        ax = val.axes[0]
        low, high = ax.get_xlim()
        assert [t for t in ax.get_xticks() if low <= t <= high] == [0, 1, 2]  # epochs: no 0.25 or 1.5
        labels = [t.get_text().replace("\N{MINUS SIGN}", "-") for t in ax.get_xticklabels()]
        assert all(label.lstrip("-").isdigit() for label in labels), labels
        assert [t.get_text() for t in seeds.axes[0].get_xticklabels()] == ["deform off", "deform on"]
        assert [t.get_text() for t in delta.axes[0].get_yticklabels()] == ["deform on"]
        for fig in (val, seeds, delta):
            assert not [t for t in _texts(fig) if "backbone." in t or "=true" in t or "=false" in t]
    finally:
        for fig in (val, seeds, delta):
            plt.close(fig)


def test_difference_plot_shows_the_reports_interval(multirun: Path) -> None:
    result = report.build_report(report.find_runs([multirun]))
    for metric in ("test/acc", "test/loss"):
        comparison = result.comparisons[(1, metric)]
        fig = report.difference_figure(result, metric)
        (container,) = fig.axes[0].containers  # one deformable variant: one point with its error bar
        point, _, (bar,) = container
        assert list(point.get_xdata()) == pytest.approx([comparison.difference])
        (segment,) = bar.get_segments()
        assert [segment[0][0], segment[1][0]] == pytest.approx([comparison.low, comparison.high])
        assert any(f"[{comparison.low:+.4f}, {comparison.high:+.4f}]" in t for t in _texts(fig))
        plt.close(fig)


def test_difference_plot_without_an_interval_and_without_a_plain_twin(tmp_path: Path) -> None:
    for i, (deform, seed) in enumerate([(False, 0), (False, 1), (True, 0)]):  # one deformable seed: n < 2
        write_run(tmp_path / "a" / str(i), deform, seed)
    result = report.build_report(report.find_runs([tmp_path / "a"]))
    fig = report.difference_figure(result, "test/acc")
    assert not fig.axes[0].containers  # no error bar to draw
    assert list(fig.axes[0].lines[0].get_xdata()) == pytest.approx(
        [ACC[(True, 0)] - (ACC[(False, 0)] + ACC[(False, 1)]) / 2]
    )
    assert any("n < 2" in t for t in _texts(fig))
    plt.close(fig)
    for i, seed in enumerate((0, 1)):  # deform on only: nothing to compare
        write_run(tmp_path / "b" / str(i), True, seed)
    only_on = report.build_report(report.find_runs([tmp_path / "b"]))
    assert report.difference_figure(only_on, "test/acc") is None
    assert only_on.names == ["all runs"]
    written = report.write_plots(only_on, tmp_path)
    assert not [p for p in written if p.name.startswith("delta_")]


def test_readable_names_of_other_differences() -> None:
    def variant(deform: str, **others: str) -> report.Variant:
        return report.Variant(tuple(sorted({"backbone.deform.enabled": deform, **others}.items())))

    keys = [
        "backbone._target_",
        "backbone.deform.enabled",
        "backbone.deform.modulated",
        "backbone.deform.stages",
        "data.seed",
        "task.seed",
    ]
    variants = [
        variant(
            d,
            **{
                "backbone._target_": "dcn.backbones.ResNetBackbone",
                "backbone.deform.modulated": m,
                "backbone.deform.stages": "[3, 4]",
                "data.seed": "1",
                "task.seed": "2",
            },
        )
        for d, m in (("false", "false"), ("false", "true"), ("true", "true"))
    ]
    for v in variants:
        v.runs.append(
            report.Run(Path("r"), {"deform": {"enabled": dict(v.key)["backbone.deform.enabled"] == "true"}})
        )
    assert report.variant_names(variants, keys) == [
        # The plain variants need their (ignored) deform settings to stay apart.
        "ResNetBackbone, data.seed=1, task.seed=2, deform off, modulated off, stages=[3, 4]",
        "ResNetBackbone, data.seed=1, task.seed=2, deform off, modulated on, stages=[3, 4]",
        "ResNetBackbone, data.seed=1, task.seed=2, deform on, modulated on, stages=[3, 4]",
    ]
    assert report.variant_names(variants[1:], keys) == [
        "ResNetBackbone, data.seed=1, task.seed=2, deform off",
        "ResNetBackbone, data.seed=1, task.seed=2, deform on, modulated on, stages=[3, 4]",
    ]


def test_bad_inputs_name_the_path(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    with pytest.raises(ValueError, match="no runs found"):
        report.find_runs([tmp_path])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text("{not json")
    (run,) = report.find_runs([tmp_path])
    assert run.record is None and "unreadable results.json" in run.problem


@pytest.mark.slow
def test_real_sweep_of_train_py(tmp_path: Path) -> None:
    """2 x 2 sweep of the default experiment (deform off/on x 2 seeds) on a tiny budget, then the report."""
    sweep = tmp_path / "multirun"
    command = [
        "-m",
        f"hydra.sweep.dir={sweep}",
        "backbone.deform.enabled=false,true",
        "seed=0,1",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        *TINY_DIGITS,
    ]
    run_train_py(command, tmp_path)
    assert report.main([str(sweep)]) == 0
    result = report.build_report(report.find_runs([sweep]))
    assert [v.label for v in result.variants] == [
        "backbone.deform.enabled=false",
        "backbone.deform.enabled=true",
    ]
    assert [len(v.completed) for v in result.variants] == [2, 2]
    assert (1, "test/acc") in result.comparisons
    text = (sweep / "report" / "report.md").read_text()
    assert "val_acc.png" in text and (sweep / "report" / "val_acc.png").is_file()
    assert "delta_test_acc.pdf" in text and (sweep / "report" / "delta_test_acc.pdf").is_file()


def test_numbered_job_directories_are_listed_in_numeric_order(tmp_path: Path) -> None:
    for i, (deform, seed) in enumerate(sorted(ACC) * 2):  # 12 jobs: 0..11, as a 4 x 3 sweep names them
        write_run(tmp_path / str(i), deform, seed)
    names = [run.path.name for run in report.find_runs([tmp_path])]
    assert names == [str(i) for i in range(12)]


def test_metric_families_are_drawn_as_curves(tmp_path):
    """test/acc_scale0.5 ... test/acc_scale1.5 (mnist_scaled) become one curve per variant against
    the scale, with the mean over seeds and its 95% interval."""
    from dcn import report as R

    families = R.metric_families(
        [
            "test/acc",
            "test/acc_scale0.5",
            "test/acc_scale1.0",
            "test/acc_scale1.5",
            "test/loss",
            "test/x_scale1",
        ]
    )
    assert families == {
        ("test/acc", "scale"): [
            (0.5, "test/acc_scale0.5"),
            (1.0, "test/acc_scale1.0"),
            (1.5, "test/acc_scale1.5"),
        ]
    }

    class FakeVariant:
        def __init__(self, values):
            self._values, self.completed = values, [object()] * 3

        def values(self, metric):
            return self._values[metric]

    class FakeReport:
        names = ["deform off", "deform on"]
        variants = [
            FakeVariant({m: [0.5, 0.6, 0.7] for _, m in families[("test/acc", "scale")]}),
            FakeVariant({m: [0.8, 0.8, 0.8] for _, m in families[("test/acc", "scale")]}),
        ]

    fig = R.family_figure(FakeReport(), "test/acc", "scale", families[("test/acc", "scale")])
    lines = fig.axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[0.5, 1.0, 1.5]] * 2
    assert list(lines[0].get_ydata()) == pytest.approx([0.6] * 3) and list(
        lines[1].get_ydata()
    ) == pytest.approx([0.8] * 3)
    band = fig.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.6 - 4.302653 * 0.1 / 3**0.5, abs=1e-4)  # t(0.975, 2) * std / sqrt(n)
    import matplotlib.pyplot as plt

    plt.close(fig)
