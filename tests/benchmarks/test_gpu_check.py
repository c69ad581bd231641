"""benchmarks/gpu_check.py: its parsers, verdicts and report, its step plumbing (run against a stand-in
Python that prints what a step's tool would), the carried-wheel install, and one real dry run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import gpu_check as gc
import pytest

FAKE_PYTHON = f"""#!{sys.executable}
# Stands in for the Python a step runs: prints $FAKE_STDOUT / $FAKE_STDERR, sleeps $FAKE_SLEEP s,
# exits $FAKE_RC, whatever its arguments.
import os, sys, time
sys.stdout.write(os.environ.get("FAKE_STDOUT", ""))
sys.stderr.write(os.environ.get("FAKE_STDERR", ""))
sys.stdout.flush()
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""


def make_ctx(tmp_path: Path, dry_run: bool = False, python: str = sys.executable, budget: float = 600):
    out = tmp_path / "report"
    out.mkdir(exist_ok=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    deadline = time.monotonic() + budget
    return gc.Context(
        out=out, wheels=wheels, dry_run=dry_run, deadline=deadline, python=python, scratch=scratch
    )


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    path = tmp_path / "fake_python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return str(path)


def fake(monkeypatch, stdout: str = "", stderr: str = "", rc: int = 0, sleep: float = 0) -> None:
    monkeypatch.setenv("FAKE_STDOUT", stdout)
    monkeypatch.setenv("FAKE_STDERR", stderr)
    monkeypatch.setenv("FAKE_RC", str(rc))
    monkeypatch.setenv("FAKE_SLEEP", str(sleep))


def step(name: str, check: bool) -> gc.Step:
    return gc.Step(name, name.title(), check, 10, 10, lambda ctx, limit: gc.Result(gc.PASSED))


# -- the pytest summary --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "output, counts",
    [
        (
            "...\n1 failed, 328 passed, 2 skipped, 3 warnings in 95.21s (0:01:35)\n",
            {"failed": 1, "passed": 328, "skipped": 2, "warnings": 3},
        ),
        (
            "x\n===== 9 passed, 73 skipped, 1 deselected in 0.82s =====\n",
            {"passed": 9, "skipped": 73, "deselected": 1},
        ),
        ("1 error in 1.00s\n", {"errors": 1}),
        (
            "3 passed, 1 xfailed, 1 xpassed, 2 errors in 12s\n",
            {"passed": 3, "xfailed": 1, "xpassed": 1, "errors": 2},
        ),
        ("no tests ran in 0.01s\n", {}),
    ],
)
def test_parse_pytest_summary(output, counts):
    assert gc.parse_pytest_summary(output) == counts


def test_parse_pytest_summary_reads_the_last_summary_line_and_none_without_one():
    # A test's own output can look like a summary; pytest's line is the last one.
    output = "5 passed in 1s (printed by a test)\nFAILED x.py::t\n2 failed, 3 passed in 4.50s\n"
    assert gc.parse_pytest_summary(output) == {"failed": 2, "passed": 3}
    assert gc.parse_pytest_summary("Traceback (most recent call last):\nImportError: boom\n") is None


@pytest.mark.parametrize(
    "stdout, rc, status, summary",
    [
        ("SKIPPED [2] t.py:3: no\n10 passed, 2 skipped in 3.1s\n", 0, gc.PASSED, "10 passed, 2 skipped"),
        ("FAILED t.py::a - boom\n1 failed, 9 passed in 3.1s\n", 1, gc.FAILED, "9 passed, 1 failed"),
        ("no tests ran in 0.01s\n", 5, gc.FAILED, "no tests ran"),
        ("INTERNALERROR> Traceback\n", 3, gc.FAILED, "no pytest summary (exit 3)"),
    ],
)
def test_tests_step_verdict(tmp_path, fake_python, monkeypatch, stdout, rc, status, summary):
    fake(monkeypatch, stdout=stdout, rc=rc)
    result = gc.step_tests(make_ctx(tmp_path, python=fake_python), 30)
    assert (result.status, result.summary) == (status, summary)
    assert (tmp_path / "report" / "tests.log").read_text() == stdout
    if "FAILED t.py::a" in stdout:
        assert "FAILED t.py::a - boom" in result.details


def test_tests_step_requires_cupy_on_the_gpu_only(tmp_path, fake_python, monkeypatch):
    monkeypatch.setenv("DCN_REQUIRE_CUPY", "1")
    fake(monkeypatch, stdout="1 passed in 1s\n")
    assert "DCN_REQUIRE_CUPY=1" in gc.step_tests(make_ctx(tmp_path, python=fake_python), 30).details
    dry = make_ctx(tmp_path, dry_run=True, python=fake_python)
    assert "DCN_REQUIRE_CUPY" not in dry.env() and "DCN_REQUIRE_CUPY" not in gc.step_tests(dry, 30).details


# -- running commands ------------------------------------------------------------------------------------
def test_a_command_past_its_limit_is_killed_and_reported(tmp_path, fake_python, monkeypatch):
    fake(monkeypatch, stdout="started\n", sleep=60)
    start = time.monotonic()
    result = gc.step_tests(make_ctx(tmp_path, python=fake_python), 1)
    assert time.monotonic() - start < 20
    assert result.status == gc.TIMED_OUT
    assert "killed after its time limit" in (tmp_path / "report" / "tests.err.log").read_text()


def test_self_check_missing_module_skip_and_failure(tmp_path, fake_python, monkeypatch):
    ctx = make_ctx(tmp_path, python=fake_python)
    fake(monkeypatch, stderr="/usr/bin/python3: No module named dcn.ops.check\n", rc=1)
    assert gc.step_self_check(ctx, 30).status == gc.MISSING
    # Exit 2 (nothing to check: no GPU or no CuPy) is expected on a CPU, a failure on a GPU machine.
    fake(monkeypatch, stderr="dcn.ops.check: nothing to check: CuPy is not installed\n", rc=2)
    assert gc.step_self_check(make_ctx(tmp_path, dry_run=True, python=fake_python), 30).status == gc.SKIPPED
    assert gc.step_self_check(ctx, 30).status == gc.FAILED
    fake(monkeypatch, stdout="table\n11 of 12 checks agree.\n", rc=1)
    result = gc.step_self_check(ctx, 30)
    assert result.status == gc.FAILED and "11 of 12 checks agree." in result.summary


def test_run_step_reports_a_crashing_step_and_an_exhausted_budget(tmp_path):
    def broken(ctx, limit):
        raise KeyError("oops")

    ctx = make_ctx(tmp_path)
    result = gc.run_step(ctx, gc.Step("broken", "Broken", False, 10, 10, broken))
    assert result.status == gc.FAILED and "KeyError" in result.summary
    assert "Traceback" in (ctx.out / "broken.err.log").read_text()
    late = make_ctx(tmp_path, budget=5)  # under MIN_STEP_S left
    result = gc.run_step(late, gc.Step("late", "Late", True, 10, 10, broken))
    assert result.status == gc.SKIPPED and "out of time" in result.summary
    assert "out of time" in (late.out / "late.log").read_text()


# -- verdicts --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "check_status, bench_status, dry_run, code",
    [
        (gc.PASSED, gc.PASSED, False, 0),
        (gc.FAILED, gc.PASSED, False, 1),
        (gc.TIMED_OUT, gc.PASSED, False, 1),
        (gc.PASSED, gc.FAILED, False, 0),  # a benchmark failure does not fail a GPU run...
        (gc.PASSED, gc.FAILED, True, 1),  # ...but does fail the dry run
        (gc.PASSED, gc.TIMED_OUT, True, 1),
        (gc.SKIPPED, gc.SKIPPED, False, 0),
        (gc.MISSING, gc.PASSED, True, 0),
    ],
)
def test_exit_code(check_status, bench_status, dry_run, code):
    results = [(step("tests", True), gc.Result(check_status)), (step("ops", False), gc.Result(bench_status))]
    assert gc.exit_code(results, dry_run) == code


def test_sanitizer_verdicts():
    ok = gc.sanitizer_result(0, "cases run: 162\n========= ERROR SUMMARY: 0 errors\n")
    assert ok.status == gc.PASSED
    bad = gc.sanitizer_result(9, "========= Invalid __global__ read\n========= ERROR SUMMARY: 3 errors\n")
    assert (bad.status, bad.summary) == (gc.FAILED, "3 memcheck errors (exit 9)")
    refused = gc.sanitizer_result(
        1, "========= Internal Sanitizer Error: The Sanitizer failed to initialize\n"
    )
    assert refused.status == gc.SKIPPED and "Internal Sanitizer Error" in refused.summary
    crashed = gc.sanitizer_result(1, "Traceback (most recent call last):\nImportError: no host_kernels\n")
    assert crashed.status == gc.FAILED
    # Cut off by its time limit: a finding printed before fails; otherwise it is no verdict (skipped).
    assert gc.sanitizer_result(None, "cases run: 40\n").status == gc.SKIPPED
    cut = gc.sanitizer_result(None, "========= Invalid __global__ write of size 4 bytes\n")
    assert cut.status == gc.FAILED


# -- summaries and the report ----------------------------------------------------------------------------
TRAIN_TABLE = textwrap.dedent(
    """\
    _Training step on GPU._

    | task | network | input | precision | plain step | deform step | deform/plain |
    |---|---|---|---|---:|---:|---:|
    | classification | ResNet-50 | 224x224, batch 32 | 32-true | 60.0 ms | 75.0 ms | 1.25x |
    | classification | ResNet-50 | 224x224, batch 32 | bf16-mixed | 30.0 ms | 42.0 ms | 1.40x |
    | frcnn | Faster R-CNN | 128x128, batch 8 | bf16-mixed | **FAILED**: TypeError: dtype | | |
    | deeplab | skipped: sklearn is not installed (No module named 'sklearn') | | | | | |
    """
)


def test_table_rows_and_summaries():
    rows = gc.table_rows(TRAIN_TABLE)
    assert [r[0] for r in rows] == ["classification", "classification", "frcnn", "deeplab"]
    assert gc.summarize_train(TRAIN_TABLE) == (
        "deform/plain: classification 1.25x 1.40x (bf16); 1 failed; "
        "skipped: deeplab (sklearn is not installed (No module named 'sklearn'))"
    )
    determinism = (
        "| op | backend | det | default | t det | t default | ratio |\n|---|---|---|---|---|---|---|\n"
        "| deform_conv2d | `cupy` | **yes** | no | 2 ms | 1 ms | 2.00x |\n"
        "| deform_roi_pool | `cupy` | **NO** | no | 3 ms | 1 ms | 3.00x |\n"
    )
    expected = "1 of 2 reproducible bit for bit; deterministic/default backward 2.00x-3.00x"
    assert gc.summarize_determinism(determinism) == expected
    profile = (
        "| phase | sampling | GEMM | other | all | host |\n|---|---:|---:|---:|---:|---:|\n"
        "| forward | 1 µs | 2 µs | 3 µs | 6 µs | 50 µs |\n| backward | 4 µs | 5 µs | 6 µs | 15 µs | 70 µs |\n"
    )
    assert (
        gc.summarize_profile(profile)
        == "forward 6 µs + backward 15 µs of device work; host 50 µs + 70 µs per call"
    )
    assert gc.count_tables(TRAIN_TABLE + "\n" + profile) == "6 rows in 2 tables"


def test_report(tmp_path):
    info = {
        "date": "2026-12-01 10:00 UTC",
        "gpu": "NVIDIA H200, 139 GiB, compute capability 9.0",
        "driver": "580.1",
        "torch": "2.11.0+cu130",
        "cuda": "13.0",
        "cudnn": 91002,
        "cupy": "14.2.0",
    }
    (tmp_path / "tests.log").write_text("")
    results = [
        (step("tests", True), gc.Result(gc.FAILED, "1 failed, 9 passed", "**the failures**", 95, 140)),
        (step("ops", False), gc.Result(gc.PASSED, "12 rows in 2 tables", "| a |\n|---|\n| 1 |", 30, 60)),
        (step("sanitizer", True), gc.Result(gc.SKIPPED, "compute-sanitizer is not on PATH")),
    ]
    report = gc.render_report(info, results, dry_run=False, out=tmp_path)
    assert report.startswith("# dcn GPU check\n") and "DRY RUN" not in report
    for text in (
        "NVIDIA H200",
        "580.1",
        "2.11.0+cu130 (CUDA 13.0, cuDNN 91002)",
        "14.2.0",
        "**FAILED**: tests",
    ):
        assert text in report
    assert "| [Tests](#tests) | check | FAILED | 95 s | 140 s | 1 failed, 9 passed |" in report
    assert "**the failures**" in report and "compute-sanitizer is not on PATH" in report
    assert "[tests.log](tests.log)" in report and "tests.err.log" not in report  # only logs that exist
    passed = gc.render_report(info, results[1:], dry_run=True, out=tmp_path)
    assert "**DRY RUN on the CPU**" in passed and "**PASSED**" in passed


# -- the carried wheels ----------------------------------------------------------------------------------
def test_train_step_is_skipped_when_a_needed_wheel_is_missing(tmp_path, fake_python, monkeypatch):
    # The stand-in Python answers the import probe: none of the carried modules can be imported.
    fake(monkeypatch, stdout="hydra\nomegaconf\nantlr4\n")
    ctx = make_ctx(tmp_path, python=fake_python)
    (ctx.wheels / "omegaconf-2.3.1-py3-none-any.whl").write_bytes(b"")
    result = gc.step_train(ctx, 30)
    assert result.status == gc.SKIPPED
    assert "hydra-core, antlr4-python3-runtime: not installed, and no wheel in" in result.summary
    assert "make gpu-wheels" in result.summary and "omegaconf," not in result.summary
    assert not (ctx.out / "train.log").exists()  # train_steps.py never started


def test_wheel_file_matches_normalised_names(tmp_path):
    wheel = tmp_path / "antlr4_python3_runtime-4.9.3-py3-none-any.whl"
    wheel.write_bytes(b"")
    (tmp_path / "hydra_core_extra-1.0-py3-none-any.whl").write_bytes(b"")
    assert gc.wheel_file(tmp_path, "antlr4-python3-runtime") == wheel
    assert gc.wheel_file(tmp_path, "hydra-core") is None


def _write_wheel(folder: Path, module: str, dist: str, version: str = "1.0") -> None:
    """A minimal pure-Python wheel: one module and its dist-info."""
    stem = f"{dist.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        whl.writestr(
            f"{stem}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        )
        whl.writestr(
            f"{stem}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        whl.writestr(f"{stem}.dist-info/RECORD", "")


def test_missing_modules_are_installed_from_the_wheels_folder_with_pip(tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path)
    monkeypatch.setattr(
        gc, "CARRIED_WHEELS", (("dcn_gpu_check_probe", "dcn-gpu-check-probe"), ("json", "json"))
    )
    _write_wheel(ctx.wheels, "dcn_gpu_check_probe", "dcn-gpu-check-probe")
    target, reason = gc.install_carried_wheels(ctx, 120)
    assert reason is None, reason
    assert (target / "dcn_gpu_check_probe" / "__init__.py").exists()
    assert not (target / "json").exists()  # importable already: not installed
    probe = [ctx.python, "-c", "import dcn_gpu_check_probe as m; print(m.VALUE)"]
    assert (
        subprocess.run(probe, env=ctx.env(extra_path=[target]), capture_output=True, text=True).stdout
        == "42\n"
    )


# -- one real dry run ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dry_run(tmp_path):
    """`make gpu-check DRY=1`: every step on the CPU at tiny sizes, exit 0, one report."""
    out = tmp_path / "gpu_report"
    cmd = [sys.executable, str(gc.BENCH / "gpu_check.py"), "--dry-run", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    report = (out / "report.md").read_text()
    assert done.returncode == 0, f"{done.stdout}{done.stderr[-2000:]}(details: {out})"
    assert "**DRY RUN on the CPU**" in report and "**PASSED**" in report
    for s in gc.STEPS:
        assert f'<a id="{s.name}"></a>' in report and (out / f"{s.name}.log").exists()
    # The training step built and ran every task through the Hydra configs, in both precisions.
    train = (out / "train.log").read_text()
    for task in ("classification", "deeplab", "frcnn", "siamrpn"):
        assert f"| {task} |" in train and "skipped" not in train
    assert train.count("x |") == 8
