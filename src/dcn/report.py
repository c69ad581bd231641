"""Sweep report: ``python -m dcn.report <multirun dir | run dirs...> [--out DIR]``.

Answers "does deformable convolution help here, and by how much?" from finished runs. It reads each
run's ``results.json`` (see :mod:`dcn.results`) and its CSV-logged metrics, groups the runs into
*variants* by every config difference except the seed (and except keys that name the run itself:
paths, run directories, logger run names), and writes ``report.md`` plus plots:

- a table with, per variant, mean ± standard deviation and n of every test metric, the difference
  to the plain (deform off) variant with a 95% confidence interval (Welch's t, unequal variances),
  the mean wall time and the parameter count;
- ``delta_<metric>.png`` and ``.pdf``: that difference with its interval, one row per deformable
  variant: the answer of the sweep in one picture;
- ``val_<metric>.png``: validation curves per variant, the mean over seeds with a ±1 std band;
- ``test_<metric>.png``: the final test metric per variant, one point per seed, with the mean;
- failed, interrupted and unfinished runs, listed with their error (never silently dropped).

Tables keep each variant's config overrides (``backbone.deform.enabled=true``, what to type to rerun
it); plots and tables name variants for people (``deform on``, ``lr=0.01, deform off``, see
:func:`variant_names`).

"Plain variant" of a deformable variant: the variant with every deformable switch off
(``backbone.deform.enabled = false`` and, for detection, ``task.roi_pool = align``) that agrees with
it on every config difference outside ``backbone.deform.*``, ``task.roi_pool`` and
``task.deform_roi_pool.*`` (so a sweep over backbones and deform on/off compares each backbone with
its own plain twin, and the detection ablation compares deformable conv, deformable RoI pooling and
both with the plain Faster R-CNN, as the DCN paper's table does).

Typical use::

    python train.py -m backbone.deform.enabled=false,true seed=0,1,2
    python -m dcn.report logs/default/multiruns/<date>_<id>        # -> <that dir>/report/report.md
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from dcn.results import RESULTS_FILE, shown_path

__all__ = [
    "DEFAULT_IGNORE",
    "Comparison",
    "Report",
    "Run",
    "Variant",
    "build_report",
    "difference_figure",
    "find_runs",
    "main",
    "per_seed_figure",
    "validation_figure",
    "variant_names",
    "welch_interval",
    "write_plots",
]

# Config keys (fnmatch globs over dotted keys) that differ between runs of one variant by design:
# the seed itself and everything that names the run (its directory, its logger run name/id).
DEFAULT_IGNORE: Tuple[str, ...] = (
    "seed",
    "paths.*",
    "hydra.*",
    "ckpt_path",
    "*.save_dir",
    "*.dirpath",
    "*.default_root_dir",
    "*.output_dir",
    "logger.*.name",
    "logger.*.id",
    "logger.*.version",
    "logger.*.resume_from",
)
# Config keys of the deformable switches: the backbone's deform block and, for detection, the RoI
# pooler (task.roi_pool=deform). A variant is "plain" when every switch is off; its deformable
# variants are compared with the plain variant that agrees with them on every other key.
_DEFORM_PREFIXES = ("backbone.deform.", "task.roi_pool", "task.deform_roi_pool.")
_DEFORM_SWITCH = "backbone.deform.enabled"
_ROI_POOL = "task.roi_pool"
_COMPLETED = "completed"
_CONFIDENCE = 0.95


@dataclass
class Run:
    """One run directory: its record (``None`` when results.json is missing or unreadable)."""

    path: Path
    record: Optional[Dict[str, Any]]
    problem: Optional[str] = None  # why the run is not usable, for the failed/unfinished list

    @property
    def status(self) -> str:
        if self.record is None:
            return "unfinished"
        return str(self.record.get("status", "unknown"))

    @property
    def completed(self) -> bool:
        return self.record is not None and self.status == _COMPLETED

    @property
    def seed(self) -> Any:
        return None if self.record is None else self.record.get("seed")

    @property
    def deform_enabled(self) -> Optional[bool]:
        """Whether any deformable part is on: the backbone's deform block, or deformable RoI pooling."""
        if self.record is None:
            return None
        roi_pool = ((self.record.get("config") or {}).get("task") or {}).get("roi_pool")
        deform = self.record.get("deform")
        if deform is None:
            if "deform" not in self.record:
                return True if roi_pool == "deform" else None
            return roi_pool == "deform"
        return bool(deform.get("enabled", False)) or roi_pool == "deform"


@dataclass
class Variant:
    """Runs that share every config value except the ignored keys (typically: except the seed)."""

    key: Tuple[Tuple[str, str], ...]  # the differing (dotted key, value) pairs, sorted by key
    runs: List[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key) or "all runs"

    @property
    def completed(self) -> List[Run]:
        return [r for r in self.runs if r.completed]

    @property
    def deform_enabled(self) -> Optional[bool]:
        flags = {r.deform_enabled for r in self.runs}
        return flags.pop() if len(flags) == 1 else None

    @property
    def context(self) -> Tuple[Tuple[str, str], ...]:
        """The key without deform settings: variants with equal context are deform twins."""
        return tuple((k, v) for k, v in self.key if not k.startswith(_DEFORM_PREFIXES))

    def values(self, metric: str) -> List[float]:
        out = []
        for run in self.completed:
            value = (run.record.get("metrics") or {}).get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.append(float(value))
        return out


@dataclass
class Comparison:
    """``variant - plain`` for one metric: the difference of means and its Welch 95% interval."""

    metric: str
    difference: float
    low: float
    high: float
    plain_label: str


@dataclass
class Report:
    """Everything the tables and plots show, computed once by :func:`build_report`."""

    runs: List[Run]
    variants: List[Variant]
    metrics: List[str]
    comparisons: Dict[Tuple[int, str], Comparison]  # (variant index, metric) -> comparison
    plain_of: Dict[int, int]  # variant index -> index of its plain twin
    differing_keys: List[str]
    names: List[str] = field(default_factory=list)  # a readable name per variant (see variant_names)


# ----------------------------------------------------------------------------------------------
# Finding and reading runs


def _read_record(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"unreadable {path.name}: {error}"
    if not isinstance(record, dict):
        return None, f"{path.name} does not hold a JSON object"
    return record, None


def find_runs(paths: Iterable[Path | str]) -> List[Run]:
    """Runs under ``paths``: each path is a run directory (holding results.json), a results.json
    file, or a directory searched recursively (a multirun directory). Directories that Hydra made
    for a job (they hold ``.hydra/``) but that have no results.json are returned as unfinished.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no run at all was found.
    """
    found: Dict[Path, Run] = OrderedDict()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"no such run or multirun directory: {path}")
        if path.is_file():
            if path.name != RESULTS_FILE:
                raise ValueError(f"{path} is not a {RESULTS_FILE} file nor a directory")
            candidates = [path]
            job_dirs: List[Path] = []
        else:
            candidates = sorted(path.rglob(RESULTS_FILE))
            job_dirs = sorted(p.parent for p in path.rglob(".hydra") if p.is_dir())
        for results in candidates:
            run_dir = results.parent.resolve()
            record, problem = _read_record(results)
            found.setdefault(run_dir, Run(run_dir, record, problem))
        for job_dir in job_dirs:
            run_dir = job_dir.resolve()
            if run_dir not in found:
                found[run_dir] = Run(run_dir, None, f"no {RESULTS_FILE} (the run never started training)")
    if not found:
        raise ValueError(
            f"no runs found under {[str(p) for p in paths]}: expected run directories holding {RESULTS_FILE} "
            "(written by train.py) or a multirun directory containing them"
        )
    return sorted(found.values(), key=lambda r: _natural_key(str(r.path)))


def _natural_key(text: str) -> Tuple[Any, ...]:
    """Sort key that orders numbered job directories as numbers: ``.../2`` before ``.../10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


# ----------------------------------------------------------------------------------------------
# Grouping into variants


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, Mapping):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: "{}"}
    return {prefix[:-1]: node}


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # true / false / null, as typed on Hydra's command line
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _ignored(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _run_config(run: Run, patterns: Sequence[str]) -> Dict[str, str]:
    record = run.record or {}
    run_dir = str(record.get("run_dir") or run.path)
    out = {}
    for key, value in _flatten(record.get("config") or {}).items():
        if _ignored(key, patterns):
            continue
        text = _format_value(value)
        if run_dir and run_dir in text:  # a path inside this run's directory
            continue
        out[key] = text
    return out


def group_variants(
    runs: Sequence[Run], ignore: Sequence[str] = DEFAULT_IGNORE
) -> Tuple[List[Variant], List[str]]:
    """Group runs by every config value that differs between runs, except keys matching ``ignore``.

    Runs without a record (no results.json) cannot be placed and form no variant; they are still
    listed by the report. Returns the variants (ordered by key) and the differing keys.
    """
    configs = {id(run): _run_config(run, ignore) for run in runs if run.record is not None}
    all_keys = sorted(set().union(*configs.values())) if configs else []
    differing = [k for k in all_keys if len({c.get(k, "<absent>") for c in configs.values()}) > 1]
    variants: Dict[Tuple[Tuple[str, str], ...], Variant] = {}
    for run in runs:
        if run.record is None:
            continue
        config = configs[id(run)]
        key = tuple((k, config.get(k, "<absent>")) for k in differing)
        variants.setdefault(key, Variant(key)).runs.append(run)
    ordered = sorted(variants.values(), key=lambda v: (v.context, v.deform_enabled is True, v.key))
    return ordered, differing


def _pair_with_plain(variants: Sequence[Variant]) -> Dict[int, int]:
    """Map each deformable variant's index to its plain twin's (same context, deform off)."""
    pairs = {}
    for i, variant in enumerate(variants):
        if variant.deform_enabled is not True:
            continue
        twins = [
            j for j, v in enumerate(variants) if v.deform_enabled is False and v.context == variant.context
        ]
        if twins:
            # Several plain twins (e.g. a sweep over deform.modulated, which a plain net ignores):
            # take the one whose deform settings differ least from this variant's.
            mine = dict(variant.key)
            pairs[i] = min(twins, key=lambda j: sum(mine.get(k) != v for k, v in variants[j].key))
    return pairs


# ----------------------------------------------------------------------------------------------
# Names for people


def _short_keys(keys: Sequence[str]) -> Dict[str, str]:
    """Each dotted key by its last part (``task.optimizer.lr`` -> ``lr``), or by as many trailing
    parts as keep it apart from the other keys."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if not any(other != key and (other == short or other.endswith("." + short)) for other in keys):
                break
        out[key] = short
    return out


def _setting(key: str, short: str, value: str) -> str:
    """One config difference as text: ``lr=0.01``, ``modulated on``, ``ResNetBackbone``."""
    if short.endswith("_target_"):
        return value.rsplit(".", 1)[-1]  # a class: its name says enough
    if value in ("true", "false"):
        return f"{short} {'on' if value == 'true' else 'off'}"
    return f"{short}={value}"


def _deform_name(variant: Variant, keys: Mapping[str, str]) -> str:
    """``deform on`` / ``deform off``; with deformable RoI pooling in the sweep (the detection
    ablation), which of the two deformable parts is on."""
    if _ROI_POOL not in keys:
        return {True: "deform on", False: "deform off", None: "deform mixed"}[variant.deform_enabled]
    conv = keys.get(_DEFORM_SWITCH)
    if conv is None:  # the same for every variant of the sweep: read it from a run
        conv = "true" if ((variant.runs[0].record or {}).get("deform") or {}).get("enabled") else "false"
    parts = (["conv"] if conv == "true" else []) + (["RoI pooling"] if keys[_ROI_POOL] == "deform" else [])
    name = "deform " + " + ".join(parts) if parts else "deform off"
    if keys[_ROI_POOL] not in ("align", "deform"):
        name += f", roi_pool={keys[_ROI_POOL]}"
    return name


def variant_names(variants: Sequence[Variant], differing_keys: Sequence[str]) -> List[str]:
    """A readable name per variant, for plots and tables: its differences from the other variants
    outside the deform settings (``lr=0.01``, the class name of a ``_target_``), then ``deform on`` /
    ``deform off`` when the sweep switches deformable parts, then the deform settings that differ
    (``stages=[3, 4]``, ``modulated on``), which a plain variant shows only when it needs them to keep
    its name apart. ``all runs`` when nothing differs."""
    short = _short_keys(differing_keys)
    switches = any(k == _DEFORM_SWITCH or k == _ROI_POOL for k in differing_keys)

    def name(variant: Variant, full: bool) -> str:
        keys = dict(variant.key)
        parts = [_setting(k, short[k], v) for k, v in variant.context]
        if switches:
            parts.append(_deform_name(variant, keys))
        if full or variant.deform_enabled is not False:
            parts += [
                _setting(k, short[k], v)
                for k, v in variant.key
                if k.startswith(_DEFORM_PREFIXES) and k not in (_DEFORM_SWITCH, _ROI_POOL)
            ]
        return ", ".join(parts) or "all runs"

    names = [name(v, full=False) for v in variants]
    clashing = {n for n in names if names.count(n) > 1}
    names = [name(v, full=True) if n in clashing else n for v, n in zip(variants, names)]
    # Still equal (a difference only in keys of one name): number them rather than show two as one.
    return [f"{n} #{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


# ----------------------------------------------------------------------------------------------
# Statistics


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than 2 values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def welch_interval(
    a: Sequence[float], b: Sequence[float], confidence: float = _CONFIDENCE
) -> Tuple[float, float, float]:
    """``mean(a) - mean(b)`` with its two-sided ``confidence`` interval under Welch's t (unequal
    variances, Welch-Satterthwaite degrees of freedom). Needs at least 2 values in each sample;
    otherwise the interval is (NaN, NaN). Both samples constant: the interval is the point itself."""
    from scipy import stats

    mean_a, std_a = mean_std(a)
    mean_b, std_b = mean_std(b)
    diff = mean_a - mean_b
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    if std_a == 0 and std_b == 0:  # scipy's interval is NaN here (zero standard error)
        return diff, diff, diff
    interval = stats.ttest_ind(list(a), list(b), equal_var=False).confidence_interval(confidence)
    return diff, float(interval.low), float(interval.high)


# ----------------------------------------------------------------------------------------------
# Building the report


def build_report(
    runs: Sequence[Run], ignore: Sequence[str] = DEFAULT_IGNORE, metrics: Optional[Sequence[str]] = None
) -> Report:
    """Group ``runs`` into variants and compare each deformable variant with its plain twin on every
    test metric (or on ``metrics``)."""
    variants, differing = group_variants(runs, ignore)
    if metrics is None:
        names = set()
        for run in runs:
            if run.completed:
                names.update(
                    k for k, v in (run.record.get("metrics") or {}).items() if isinstance(v, (int, float))
                )
        metrics = sorted(names, key=lambda m: (not m.endswith("/acc"), m))
    plain_of = _pair_with_plain(variants)
    comparisons = {}
    for i, j in plain_of.items():
        for metric in metrics:
            diff, low, high = welch_interval(variants[i].values(metric), variants[j].values(metric))
            if not math.isnan(diff):
                comparisons[(i, metric)] = Comparison(metric, diff, low, high, variants[j].label)
    return Report(
        list(runs),
        variants,
        list(metrics),
        comparisons,
        plain_of,
        differing,
        variant_names(variants, differing),
    )


def _fmt(value: float, digits: int = 4) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def _fmt_signed(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{digits}f}"


def _parameters(variant: Variant) -> str:
    counts = sorted({(r.record.get("parameters") or {}).get("total") for r in variant.runs} - {None})
    if not counts:
        return "n/a"
    return f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}..{counts[-1]:,}"


def _wall_time(variant: Variant) -> str:
    times = [(r.record.get("timing") or {}).get("wall_s") for r in variant.completed]
    times = [float(t) for t in times if t]
    return _fmt(mean_std(times)[0], 1) if times else "n/a"


def _deform_label(variant: Variant) -> str:
    return {True: "on", False: "off", None: "mixed"}[variant.deform_enabled]


def summary_table(report: Report) -> str:
    """The main table as GitHub markdown: one row per variant, named for people and by its config."""
    header = ["variant", "config", "deform", "n"]
    for metric in report.metrics:
        header += [f"{metric} (mean ± std)", f"Δ {metric} vs plain [95% CI]"]
    header += ["wall s", "params"]
    rows = []
    for i, variant in enumerate(report.variants):
        n = len(variant.completed)
        row = [report.names[i], variant.label, _deform_label(variant), f"{n}/{len(variant.runs)}"]
        for metric in report.metrics:
            mean, std = mean_std(variant.values(metric))
            row.append(f"{_fmt(mean)} ± {_fmt(std)}" if not math.isnan(std) else _fmt(mean))
            comparison = report.comparisons.get((i, metric))
            if comparison is None:
                row.append("(plain)" if variant.deform_enabled is False else "n/a")
            elif math.isnan(comparison.low):
                row.append(f"{_fmt_signed(comparison.difference)} [n<2]")
            else:
                low, high = _fmt_signed(comparison.low), _fmt_signed(comparison.high)
                row.append(f"{_fmt_signed(comparison.difference)} [{low}, {high}]")
        row += [_wall_time(variant), _parameters(variant)]
        rows.append(row)
    return _markdown_table(header, rows)


def _markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def problem_runs(report: Report) -> List[Tuple[Run, str]]:
    """Runs that did not complete, with a one-line reason."""
    out = []
    for run in report.runs:
        if run.completed:
            continue
        if run.record is None:
            reason = run.problem or "no record"
        else:
            error = run.record.get("error") or {}
            if error:
                reason = f"{error.get('type', 'error')}: {error.get('message', '')}".strip()
            elif run.status == "running":
                reason = "status still 'running': killed, or still in progress"
            else:
                reason = f"status '{run.status}'"
        out.append((run, reason.splitlines()[0] if reason else reason))
    return out


# ----------------------------------------------------------------------------------------------
# Curves and plots


def _metrics_csv(run: Run) -> Optional[Path]:
    recorded = (run.record or {}).get("metrics_csv")
    candidates = ([Path(recorded)] if recorded else []) + sorted(run.path.glob("csv/**/metrics.csv"))
    return next((p for p in candidates if p.is_file()), None)


def validation_curves(run: Run) -> Dict[str, Dict[int, float]]:
    """``{"val/acc": {epoch: value}, ...}`` from the run's CSV logger file ({} when there is none)."""
    import csv

    path = _metrics_csv(run)
    if path is None:
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    if not rows or "epoch" not in rows[0]:
        return {}
    curves: Dict[str, Dict[int, float]] = {}
    for row in rows:  # one value per epoch; if a resumed run logged an epoch twice, the later row wins
        try:
            epoch = int(float(row["epoch"]))
        except (TypeError, ValueError):
            continue
        for column, text in row.items():
            if column and column.startswith("val/") and text not in (None, ""):
                try:
                    curves.setdefault(column, {})[epoch] = float(text)
                except ValueError:
                    continue
    return curves


def _safe_name(metric: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in metric).strip("_")


def _colour(i: int) -> str:
    """The colour of variant ``i``, the same in every plot of a report."""
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return colours[i % len(colours)]


def _sort_metrics(metrics: Iterable[str]) -> List[str]:
    return sorted(metrics, key=lambda m: (not m.endswith("/acc"), m))


def difference_figure(report: Report, metric: str):
    """Each deformable variant minus its plain twin on test ``metric``, with the Welch 95% interval
    (:func:`welch_interval`): one row per compared variant, a dashed line at 0; an interval clear of
    the line is a difference these seeds tell apart from seed noise. A matplotlib figure (the
    caller saves and closes it), or None when no variant has a plain twin with this metric."""
    from dcn.figures import new_figure

    rows = [
        (i, report.comparisons[(i, metric)])
        for i in sorted(report.plain_of)
        if (i, metric) in report.comparisons
    ]
    if not rows:
        return None
    several_plains = len({report.plain_of[i] for i, _ in rows}) > 1
    fig, ax = new_figure(figsize=(7.5, 1.4 + 0.55 * len(rows)))
    labels = []
    for row, (i, comparison) in enumerate(rows):
        colour, diff = _colour(i), comparison.difference
        labels.append(
            report.names[i] + (f"\nvs {report.names[report.plain_of[i]]}" if several_plains else "")
        )
        if math.isnan(comparison.low):  # fewer than 2 seeds on a side: a point without an interval
            ax.plot(
                [diff], [row], marker="o", markerfacecolor="white", markeredgecolor=colour, linestyle="none"
            )
            text = f"{_fmt_signed(diff)} (n < 2: no interval)"
        else:
            ax.errorbar(
                [diff],
                [row],
                xerr=[[diff - comparison.low], [comparison.high - diff]],
                fmt="o",
                color=colour,
                capsize=4,
                linewidth=2,
            )
            text = f"{_fmt_signed(diff)} [{_fmt_signed(comparison.low)}, {_fmt_signed(comparison.high)}]"
        ax.annotate(text, xy=(1.02, row), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.axvline(0.0, color="black", linewidth=1, linestyle="--", zorder=0)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first variant on top
    ax.set_xlabel(f"Δ {metric}: deformable − plain (mean over seeds)")
    ax.set_title(f"{metric}: difference to the plain twin, 95% CI (Welch)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def validation_figure(report: Report, metric: str, curves: Mapping[int, Mapping[str, Mapping[int, float]]]):
    """Validation ``metric`` per epoch, mean over seeds per variant with a ±1 std band; ``curves``
    maps ``id(run)`` to :func:`validation_curves` of that run. A figure, or None when no run logged
    the metric."""
    from matplotlib.ticker import MaxNLocator

    from dcn.figures import new_figure

    fig, ax = new_figure(figsize=(7, 4.2))
    plotted = False
    for i, variant in enumerate(report.variants):
        per_run = [curves[id(r)][metric] for r in variant.completed if metric in curves.get(id(r), {})]
        if not per_run:
            continue
        epochs = sorted(set().union(*per_run))
        stats = [mean_std([c[e] for c in per_run if e in c]) for e in epochs]
        mean = [s[0] for s in stats]
        std = [0.0 if math.isnan(s[1]) else s[1] for s in stats]
        lows, highs = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
        _band(ax, i, f"{report.names[i]} (n={len(per_run)})", epochs, mean, lows, highs)
        plotted = True
    if not plotted:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    return _finish_bands(
        fig,
        ax,
        "epoch (counted from 0, as in checkpoint names)",
        metric,
        f"{metric}: mean over seeds, band = ±1 std",
    )


def _band(ax, i: int, label: str, xs, mean, lows, highs) -> None:
    """Variant ``i``'s curve with a shaded band from ``lows`` to ``highs``."""
    ax.plot(xs, mean, marker="o", color=_colour(i), label=label)
    ax.fill_between(xs, lows, highs, color=_colour(i), alpha=0.2, linewidth=0)


def _finish_bands(fig, ax, xlabel: str, ylabel: str, title: str):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_seed_figure(report: Report, metric: str):
    """Test ``metric`` per variant: one point per seed, a bar at the mean. A figure."""
    from dcn.figures import new_figure

    fig, ax = new_figure(figsize=(max(4.5, 1.6 * len(report.variants) + 2), 4.2))
    for i, variant in enumerate(report.variants):
        values = variant.values(metric)
        if not values:
            continue
        # Spread the seeds sideways a little so equal values stay visible.
        offsets = [(k - (len(values) - 1) / 2) * 0.06 for k in range(len(values))]
        ax.scatter([i + o for o in offsets], values, color=_colour(i), zorder=3)
        ax.hlines(mean_std(values)[0], i - 0.25, i + 0.25, color="black", linewidth=2, zorder=2)
    ax.set_xticks(range(len(report.variants)))
    ax.set_xticklabels([name.replace(", ", "\n") for name in report.names], fontsize=8)
    ax.set_xlim(-0.5, len(report.variants) - 0.5)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: one point per seed, bar = mean", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


_FAMILY = re.compile(r"^(?P<base>.+)_(?P<axis>[a-z]+)(?P<value>-?\d+(?:\.\d+)?)$")


def metric_families(metrics: Iterable[str]) -> Dict[Tuple[str, str], List[Tuple[float, str]]]:
    """Metrics that are one quantity along an axis, e.g. ``test/acc_scale0.5`` ... ``test/acc_scale1.5``:
    ``{("test/acc", "scale"): [(0.5, "test/acc_scale0.5"), ...]}`` (families of at least 3 points)."""
    families: Dict[Tuple[str, str], List[Tuple[float, str]]] = {}
    for metric in metrics:
        match = _FAMILY.match(metric)
        if match:
            families.setdefault((match["base"], match["axis"]), []).append((float(match["value"]), metric))
    return {key: sorted(points) for key, points in families.items() if len(points) >= 3}


def family_figure(report: Report, base: str, axis: str, points: Sequence[Tuple[float, str]]):
    """``base`` against ``axis`` (e.g. test accuracy against test scale): per variant the mean over
    seeds with a 95% t-interval of that mean at every point. A figure."""
    from scipy import stats

    from dcn.figures import new_figure

    fig, ax = new_figure(figsize=(7, 4.2))
    xs = [x for x, _ in points]
    for i, variant in enumerate(report.variants):
        means, lows, highs = [], [], []
        for _, metric in points:
            values = variant.values(metric)
            mean, std = mean_std(values)
            half = (
                stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
                if len(values) > 1 and not math.isnan(std)
                else 0.0
            )
            means.append(mean)
            lows.append(mean - half)
            highs.append(mean + half)
        if all(math.isnan(m) for m in means):
            continue
        _band(ax, i, f"{report.names[i]} (n={len(variant.completed)})", xs, means, lows, highs)
    return _finish_bands(
        fig, ax, axis, base, f"{base} against {axis}: mean over seeds, band = 95% CI of the mean"
    )


def write_plots(report: Report, out_dir: Path) -> List[Path]:
    """Write into ``out_dir``: ``delta_<metric>.png`` and ``.pdf`` (:func:`difference_figure`),
    ``val_<metric>.png`` (:func:`validation_figure`) and ``test_<metric>.png`` (:func:`per_seed_figure`).
    Returns the files written."""
    written: List[Path] = []

    def save(fig: Any, name: str, pdf: bool = False) -> None:
        import matplotlib.pyplot as plt  # after new_figure has chosen the Agg backend

        path = out_dir / f"{_safe_name(name)}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
        if pdf:  # vector copy for papers and slides
            fig.savefig(path.with_suffix(".pdf"))
            written.append(path.with_suffix(".pdf"))
        plt.close(fig)

    for metric in report.metrics:
        fig = difference_figure(report, metric)
        if fig is not None:
            save(fig, f"delta_{metric}", pdf=True)
    curves = {id(run): validation_curves(run) for v in report.variants for run in v.completed}
    for metric in _sort_metrics({m for c in curves.values() for m in c}):
        fig = validation_figure(report, metric, curves)
        if fig is not None:
            save(fig, metric)
    for metric in report.metrics:
        save(per_seed_figure(report, metric), metric)
    for (base, axis), points in metric_families(report.metrics).items():
        save(family_figure(report, base, axis, points), f"curve_{base}_{axis}", pdf=True)
    return written


# ----------------------------------------------------------------------------------------------
# report.md


def render_markdown(report: Report, plots: Sequence[Path], sources: Sequence[str]) -> str:
    lines = ["# dcn sweep report", ""]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines.append(f"Generated {now} by `python -m dcn.report` from:")
    lines += [f"- `{s}`" for s in sources]
    completed = sum(r.completed for r in report.runs)
    lines += ["", f"{len(report.runs)} runs, {completed} completed, in {len(report.variants)} variants."]
    if report.differing_keys:
        keys = ", ".join(f"`{k}`" for k in report.differing_keys)
        lines.append(f"Variants differ in: {keys} (the seed is not a variant).")
    lines += [
        "",
        "## Test metrics",
        "",
        "Mean ± sample std over the completed seeds (n = completed/all runs). Δ: variant minus its plain",
        "(deform off) twin, with a 95% confidence interval from Welch's t-test; an interval that excludes 0",
        "is a difference this many seeds can distinguish from noise. Wall time: mean seconds per run.",
        "",
        summary_table(report),
        "",
    ]
    pngs = [p for p in plots if p.suffix == ".png"]
    delta_plots = [p for p in pngs if p.name.startswith("delta_")]
    curve_plots = [p for p in pngs if p.name.startswith("curve_")]
    val_plots = [p for p in pngs if p.name.startswith("val_")]
    test_plots = [p for p in pngs if p not in delta_plots and p not in val_plots and p not in curve_plots]
    if delta_plots:
        lines += [
            "## Deformable minus plain",
            "",
            (
                "Δ of each deformable variant to its plain twin with the 95% interval of the table above; "
                "an interval"
            ),
            "clear of the dashed line at 0 is a difference these seeds distinguish from seed noise.",
            "",
        ]
        for p in delta_plots:
            pdf = p.with_suffix(".pdf")
            lines.append(f"![{p.stem}]({p.name})" + (f" ([PDF]({pdf.name}))" if pdf in plots else ""))
        lines.append("")
    if curve_plots:
        lines += ["## Metrics along an axis", ""]
        for p in curve_plots:
            pdf = p.with_suffix(".pdf")
            lines.append(f"![{p.stem}]({p.name})" + (f" ([PDF]({pdf.name}))" if pdf in plots else ""))
        lines.append("")
    if val_plots:
        lines += ["## Validation curves", ""] + [f"![{p.stem}]({p.name})" for p in val_plots] + [""]
    if test_plots:
        lines += (
            ["## Final test metrics per seed", ""] + [f"![{p.stem}]({p.name})" for p in test_plots] + [""]
        )
    lines += ["## Runs", ""]
    rows = []
    index = {id(r): report.names[i] for i, v in enumerate(report.variants) for r in v.runs}
    root = Path(os.path.commonpath([str(r.path) for r in report.runs]))
    if len(report.runs) == 1:
        root = root.parent
    for run in report.runs:
        metrics = (run.record or {}).get("metrics") or {}
        rows.append(
            [
                f"`{run.path.relative_to(root)}`",
                index.get(id(run), "?"),
                str(run.seed),
                run.status,
                ", ".join(
                    f"{m}={_fmt(metrics[m])}"
                    for m in report.metrics
                    if isinstance(metrics.get(m), (int, float))
                ),
            ]
        )
    lines += [f"Directories relative to `{shown_path(root)}`.", ""]
    lines += [_markdown_table(["run", "variant", "seed", "status", "test metrics"], rows), ""]
    problems = problem_runs(report)
    lines += ["## Failed or unfinished runs", ""]
    if problems:
        lines += [f"- `{run.path}` ({run.status}): {reason}" for run, reason in problems]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def _default_out(paths: Sequence[str]) -> Path:
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0]) / "report"
    return Path("report")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dcn.report",
        description="Summarise runs of dcn's train.py: test metrics per variant, the difference to deform "
        "off with a 95% CI, validation curves, failed runs. Writes report.md and PNG plots (the "
        "differences also as PDF).",
    )
    parser.add_argument(
        "paths", nargs="+", help="multirun directories, run directories or results.json files"
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default: <the one input directory>/report, else ./report)"
    )
    parser.add_argument(
        "--metric", action="append", dest="metrics", help="test metric to report (repeatable; default: all)"
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        help="extra config keys (dotted, glob) that do not define a variant, e.g. 'trainer.max_epochs'",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    args = parser.parse_args(argv)

    try:
        runs = find_runs(args.paths)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"dcn.report: error: {error}\n")
    report = build_report(runs, ignore=DEFAULT_IGNORE + tuple(args.ignore), metrics=args.metrics)
    out_dir = args.out or _default_out(args.paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [] if args.no_plots else write_plots(report, out_dir)
    (out_dir / "report.md").write_text(render_markdown(report, plots, [str(Path(p)) for p in args.paths]))

    print(summary_table(report))
    for run, reason in problem_runs(report):
        print(f"not completed: {run.path} ({run.status}): {reason}")
    print(f"report: {out_dir / 'report.md'} ({sum(p.suffix == '.png' for p in plots)} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
