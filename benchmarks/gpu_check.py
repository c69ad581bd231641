"""The GPU check: one command for a short GPU window, one markdown report.

    make gpu-check                 # python benchmarks/gpu_check.py: report in gpu_report/report.md
    make gpu-check DRY=1           # --dry-run: the same steps on the CPU at tiny sizes (CI runs this)
    make gpu-wheels                # --download-wheels: fill gpu_wheels/ on a machine with internet
    python3 benchmarks/gpu_check.py [--out DIR] [--wheels DIR] [--budget S] [--only STEP ...] [--dry-run]

It runs on a bare CUDA machine that has python3 with torch, torchvision, cupy, lightning, torchmetrics and
pytest, without dcn installed and without internet: everything runs from this source tree (``src`` on
``PYTHONPATH``), each step in a subprocess with its own time limit and log (``<out>/<step>.log``, stderr in
``<out>/<step>.err.log``). A failing or timed-out step does not stop the others, and the whole run stays
within ``--budget`` (465 s: under 8 minutes with the start-up): a step gets at most the time left and is
skipped when less than 15 s are.

    step        kind       limit  on the GPU (--dry-run: on the CPU)
    tests       check      150 s  pytest tests/ops/cuda -m "gpu and not slow" with DCN_REQUIRE_CUPY=1 (a
                                  missing CuPy fails instead of skipping); pass/fail/skip counts parsed from
                                  its summary (dry run: -m "not slow" on the CPU-runnable
                                  test_cupy_runtime.py and test_gpu_deform_conv.py)
    self_check  check       30 s  python -m dcn.ops.check --device cuda:0; its exit 2 ("nothing to check": no
                                  GPU or no CuPy) fails on a GPU and is a skip in the dry run; "missing"
                                  while that module does not exist
    determinism check       45 s  benchmarks/determinism.py with CUBLAS_WORKSPACE_CONFIG=:4096:8: gradients of
                                  both ops bitwise equal over two runs under use_deterministic_algorithms,
                                  and the deterministic/default backward time ratio (dry run: tiny, CPU)
    sanitizer   check      100 s  compute-sanitizer --tool memcheck on tests/ops/cuda/sanitized_run.py --cuda;
                                  skipped when the tool is not on PATH or refuses to run (and in the dry run)
    ops         benchmark   60 s  benchmarks/ops.py --device cuda, float32 and bfloat16 (dry run: --tiny, CPU)
    roi_pool    benchmark   35 s  benchmarks/roi_pool.py --device cuda, float32 and bfloat16 autocast
    train       benchmark   90 s  benchmarks/train_steps.py: a training step of each task's experiment, deform
                                  on/off, float32 and bf16-mixed, built from the Hydra configs (dry run: tiny)
    profile     benchmark   25 s  benchmarks/profile_ops.py --split: sampling / GEMM / other kernel time and
                                  host time per call, N32 C512 7x7 bfloat16 autocast (dry run: tiny, CPU)

The report (``<out>/report.md``, rewritten after every step, so a run killed midway still leaves one)
gives the date, GPU, driver, torch / CUDA / cuDNN / CuPy / torchvision / Lightning versions, the verdict,
each step's status, time, limit and one-line result (test counts, deform/plain ratios, ...), then each
step's tables. ``--only tests determinism`` reruns some steps into the same --out.

Exit status: 1 when a correctness check (kind "check") failed or timed out; 0 otherwise. A benchmark that
fails is reported (status FAILED, its log) but does not fail a GPU run: its numbers are measurements, and
the CUDA path's correctness is what the checks decide. In the dry run every step counts, benchmarks
included: there a failure means the script or the code it drives has broken, which is what CI must catch.
Skipped and "missing" steps never fail the run. 2: the run could not start (no CUDA device without
``--dry-run``, an unusable --out).

Training needs hydra-core, omegaconf and antlr4-python3-runtime, which a bare GPU machine lacks. The train
step installs the missing ones (``pip install --no-index --find-links <wheels> --no-deps --target <tmp>``,
into a temporary folder on its PYTHONPATH only: nothing on the machine changes) from ``--wheels``
(default ``gpu_wheels/``), which ``make gpu-wheels`` fills beforehand on a machine with internet with
exactly the versions installed in .venv (``pip download --only-binary=:all: --no-deps``; antlr4 4.9.3 is
published only as a source archive, so it is built into a wheel with ``pip wheel --no-deps``; every file must
be a pure-Python ``none-any`` wheel). Without a needed wheel the train step is skipped with the reason.
Packages with compiled code cannot be carried this way: a task whose imports need one the machine lacks
(scikit-learn, for instance) is reported as a skipped row naming it.

gpu_wheels/ is git-ignored (binary files stay out of commits), so it travels to a machine that receives
the working tree only when named: with the device tool, ``carry: ["gpu_wheels"]`` (the three wheels take
0.4 MiB), e.g. ``run(command='python3 benchmarks/gpu_check.py --out "$OUT"', carry=["gpu_wheels"],
timeout_s=540)``; with scp or rsync, copy the folder beside the tree.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DEFAULT_OUT = ROOT / "gpu_report"
DEFAULT_WHEELS = ROOT / "gpu_wheels"
DEFAULT_BUDGET_S = 465.0
MIN_STEP_S = 15.0  # a step is not started with less time than this left in the budget

# (module, distribution): what the training step needs beyond a bare GPU machine, as pure-Python wheels.
CARRIED_WHEELS: Tuple[Tuple[str, str], ...] = (
    ("hydra", "hydra-core"),
    ("omegaconf", "omegaconf"),
    ("antlr4", "antlr4-python3-runtime"),
)

PASSED, FAILED, TIMED_OUT, SKIPPED, MISSING = "PASSED", "FAILED", "TIMED OUT", "SKIPPED", "MISSING"


# -- data ------------------------------------------------------------------------------------------------
@dataclass
class Result:
    status: str  # PASSED, FAILED, TIMED_OUT, SKIPPED or MISSING
    summary: str = ""  # one line for the steps table
    details: str = ""  # markdown for the step's section of the report
    seconds: float = 0.0  # how long the step took
    limit_s: float = 0.0  # the time it was given


@dataclass
class Context:
    out: Path
    wheels: Path
    dry_run: bool
    deadline: float  # time.monotonic() by which every step must have ended
    scratch: Path  # a temporary folder, removed at the end (the training step's installed wheels)
    python: str = sys.executable

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def env(self, extra_path: Sequence[Path] = (), **variables: str) -> Dict[str, str]:
        """The environment of a step: this tree's ``src`` (and ``extra_path``) first on PYTHONPATH."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **variables)
        paths = [*map(str, extra_path), str(ROOT / "src"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        if self.dry_run:
            env.pop("DCN_REQUIRE_CUPY", None)  # no CuPy on a CPU: its GPU tests must skip, not fail
        return env


@dataclass(frozen=True)
class Step:
    name: str  # log file stem, --only key
    title: str
    check: bool  # a correctness check (its failure fails the run), else a benchmark
    limit_s: float  # on the GPU
    dry_limit_s: float  # in the dry run, on a slow CPU
    run: Callable[[Context, float], Result]


@dataclass
class Completed:
    returncode: Optional[int]  # None: killed at the time limit
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


# -- running a command -----------------------------------------------------------------------------------
def run_logged(ctx: Context, name: str, cmd: Sequence[str], limit_s: float, env: Dict[str, str]) -> Completed:
    """Run ``cmd`` in the tree's root with stdout to ``<out>/<name>.log`` and stderr to ``<name>.err.log``;
    kill its whole process group after ``limit_s`` (compute-sanitizer and pytest start children)."""
    out_path, err_path = ctx.out / f"{name}.log", ctx.out / f"{name}.err.log"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        err.write(f"$ {shlex.join(cmd)}\n# time limit {limit_s:.0f} s\n")
        err.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            returncode: Optional[int] = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            returncode = None
            err.write(f"\n# killed after its time limit of {limit_s:.0f} s\n")
        except BaseException:  # Ctrl-C: its own session does not get the signal from the terminal
            _kill_group(proc)
            raise
    return Completed(returncode, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def outcome(done: Completed, ok: bool) -> str:
    return TIMED_OUT if done.timed_out else PASSED if ok else FAILED


def _exit_note(done: Completed) -> str:
    return "killed at its time limit" if done.timed_out else f"exit {done.returncode}"


def _tail(text: str, lines: int = 25) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "```text\n" + "\n".join(kept) + "\n```" if kept else ""


SEPARATOR = re.compile(r"^\|[-:| ]+\|$")


def table_rows(markdown: str) -> List[List[str]]:
    """The cells of every data row of the markdown tables in ``markdown`` (headers and rules left out)."""
    lines = [ln.strip() for ln in markdown.splitlines()]
    rows = []
    for i, line in enumerate(lines):
        header = i + 1 < len(lines) and SEPARATOR.match(lines[i + 1])
        if line.startswith("|") and not SEPARATOR.match(line) and not header:
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def count_tables(markdown: str) -> str:
    tables = sum(bool(SEPARATOR.match(line.strip())) for line in markdown.splitlines())
    return f"{len(table_rows(markdown))} rows in {tables} tables"


def _script(
    ctx: Context,
    name: str,
    args: Sequence[str],
    limit_s: float,
    summarize: Callable[[str], str] = count_tables,
    extra_path: Sequence[Path] = (),
    **variables: str,
) -> Result:
    """A benchmarks/ script whose stdout is markdown: PASSED when it exits 0; its stdout is the section,
    ``summarize(stdout)`` the one-line result."""
    cmd = [ctx.python, str(BENCH / args[0]), *args[1:]]
    done = run_logged(ctx, name, cmd, limit_s, ctx.env(extra_path, **variables))
    status = outcome(done, done.returncode == 0)
    details = done.stdout.strip()
    summary = summarize(done.stdout)
    if status != PASSED:
        summary += f" ({_exit_note(done)})"
        details += f"\n\n{_exit_note(done)}; the end of {name}.err.log:\n\n{_tail(done.stderr)}"
    return Result(status, summary, details)


# -- a: GPU tests ----------------------------------------------------------------------------------------
PYTEST_COUNT = re.compile(
    r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|rerun)\b"
)


def parse_pytest_summary(output: str) -> Optional[Dict[str, int]]:
    """Counts from pytest's final line ("3 failed, 320 passed, 2 skipped in 95.1s"): {} for "no tests
    ran", None when there is no such line (pytest crashed or was killed)."""
    for line in reversed(output.splitlines()):
        if re.search(r"\bin \d+(?:\.\d+)?s\b", line):
            counts: Dict[str, int] = {}
            for number, word in PYTEST_COUNT.findall(line):
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[key] = counts.get(key, 0) + int(number)
            if counts or "no tests ran" in line:
                return counts
    return None


def format_counts(counts: Dict[str, int]) -> str:
    order = ["passed", "failed", "errors", "skipped", "xfailed", "xpassed", "deselected"]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "no tests ran"


def _listing(lines: Sequence[str], most: int) -> str:
    if not lines:
        return ""
    more = f"\n... {len(lines) - most} more in tests.log" if len(lines) > most else ""
    return "\n\n```text\n" + "\n".join(lines[:most]) + more + "\n```"


def step_tests(ctx: Context, limit_s: float) -> Result:
    if ctx.dry_run:  # the part of tests/ops/cuda that runs on a CPU in seconds (CuPy tests skip)
        paths, marks = (
            ["tests/ops/cuda/test_cupy_runtime.py", "tests/ops/cuda/test_gpu_deform_conv.py"],
            "not slow",
        )
    else:  # the GPU tests only: the host-compiled kernel tests need a C++ compiler and run in CI anyway
        paths, marks = ["tests/ops/cuda"], "gpu and not slow"
    cmd = [ctx.python, "-m", "pytest", *paths, "-m", marks, "--confcutdir=tests/ops/cuda"]
    cmd += ["-p", "no:cacheprovider", "-q", "-rfEs"]
    variables = {} if ctx.dry_run else {"DCN_REQUIRE_CUPY": "1"}
    done = run_logged(ctx, "tests", cmd, limit_s, ctx.env(**variables))
    counts = parse_pytest_summary(done.stdout)
    ok = done.returncode == 0 and bool(counts) and not counts.get("failed") and not counts.get("errors")
    status = outcome(done, ok)
    summary = format_counts(counts) if counts is not None else f"no pytest summary ({_exit_note(done)})"
    details = f"`{shlex.join(cmd[1:])}`{' with DCN_REQUIRE_CUPY=1' if variables else ''}: **{summary}**."
    # -rfEs lists failures, errors and skip reasons in pytest's short summary.
    lines = done.stdout.splitlines()
    failures = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    skips = [ln for ln in lines if ln.startswith("SKIPPED ")]
    details += _listing(failures, 40) + _listing(skips, 10)
    if status != PASSED and not failures:
        details += "\n\n" + _tail(done.stdout + done.stderr)  # a crash or a timeout: how it ended
    return Result(status, summary, details)


# -- g: the self-check -----------------------------------------------------------------------------------
NOTHING_TO_CHECK = 2  # dcn.ops.check's exit status without a CUDA device or CuPy


def step_self_check(ctx: Context, limit_s: float) -> Result:
    cmd = [ctx.python, "-m", "dcn.ops.check", "--device", "cuda:0"]
    done = run_logged(ctx, "self_check", cmd, limit_s, ctx.env())
    if done.returncode not in (0, None) and "No module named dcn.ops.check" in done.stderr:
        return Result(MISSING, "python -m dcn.ops.check does not exist in this tree yet")
    said = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    if ctx.dry_run and done.returncode == NOTHING_TO_CHECK:
        # On a CPU the module can only start, parse its arguments and find no GPU: that much is checked.
        return Result(SKIPPED, f"no GPU here ({said})")
    status = outcome(done, done.returncode == 0)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else said
    details = f"`python -m dcn.ops.check --device cuda:0`: {_exit_note(done)}.\n\n" + _tail(done.stdout, 60)
    if status != PASSED:
        details += "\n\nThe end of self_check.err.log:\n\n" + _tail(done.stderr)
    return Result(status, f"{last} ({_exit_note(done)})", details)


# -- d: deterministic mode -------------------------------------------------------------------------------
def summarize_determinism(markdown: str) -> str:
    """Like "3 of 4 reproducible bit for bit; deterministic/default backward 1.20x-3.40x"."""
    rows = table_rows(markdown)
    same = sum(row[2] == "**yes**" for row in rows)
    ratios = [float(m.group(1)) for row in rows if (m := re.fullmatch(r"([\d.]+)x", row[-1]))]
    summary = f"{same} of {len(rows)} reproducible bit for bit"
    if ratios:
        summary += f"; deterministic/default backward {min(ratios):.2f}x-{max(ratios):.2f}x"
    return summary


def step_determinism(ctx: Context, limit_s: float) -> Result:
    args = ["determinism.py", "--device", ctx.device] + (["--tiny", "--reps", "2"] if ctx.dry_run else [])
    # cuBLAS reads this when CUDA starts: it must be in the environment of a fresh process.
    cublas = ":4096:8"
    return _script(ctx, "determinism", args, limit_s, summarize_determinism, CUBLAS_WORKSPACE_CONFIG=cublas)


# -- e: compute-sanitizer --------------------------------------------------------------------------------
SANITIZER_ERRORS = re.compile(r"ERROR SUMMARY: (\d+) error")
# What compute-sanitizer prints when it cannot instrument anything here (a sandbox, a GPU it does not
# support, missing permissions), as opposed to errors found in the kernels.
SANITIZER_REFUSED = re.compile(
    r"Internal Sanitizer Error|not supported|permission denied|insufficient permission|"
    r"Unable to (?:load|initialize|attach|create|find)|Failed to (?:initialize|attach|launch|load)",
    re.IGNORECASE,
)


# A memcheck finding, printed as it happens (the summary line comes only at the end).
MEMCHECK_REPORT = re.compile(r"^=+ (Invalid|Program hit|Uninitialized|Leaked)", re.M)


def sanitizer_result(returncode: Optional[int], text: str) -> Result:
    """Classify a compute-sanitizer run from its exit status and its output."""
    errors = [int(n) for n in SANITIZER_ERRORS.findall(text)]
    last = text.strip().splitlines()[-1] if text.strip() else ""
    if returncode is None:
        if any(errors) or MEMCHECK_REPORT.search(text):
            return Result(FAILED, "memcheck reported errors before its time limit")
        # Unfinished is not a verdict on the kernels: say how far it got, without failing the run.
        return Result(SKIPPED, "did not finish within its time limit; no memcheck error in what ran")
    if returncode == 0 and not any(errors):
        return Result(PASSED, f"0 errors; {last}")
    if any(errors) or returncode == 9:  # 9: our --error-exitcode, set when memcheck reports an error
        return Result(FAILED, f"{sum(errors)} memcheck errors (exit {returncode})")
    refused = SANITIZER_REFUSED.search(text)
    if refused and not errors:
        line = next(ln for ln in text.splitlines() if refused.group(0) in ln).strip("= ")
        return Result(SKIPPED, f"compute-sanitizer cannot run here: {line}")
    return Result(FAILED, f"exit {returncode}: {last}")


def step_sanitizer(ctx: Context, limit_s: float) -> Result:
    if ctx.dry_run:
        return Result(SKIPPED, "dry run: the memory checker needs the GPU kernels")
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        return Result(SKIPPED, "compute-sanitizer is not on PATH (it ships with the CUDA toolkit)")
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "9", "--print-limit", "20"]
    cmd += [ctx.python, "tests/ops/cuda/sanitized_run.py", "--cuda"]
    # Uncached allocations: every tensor is its own allocation, so a read past its end is caught.
    env = ctx.env(extra_path=[ROOT / "tests/ops/cuda"], PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    done = run_logged(ctx, "sanitizer", cmd, limit_s, env)
    result = sanitizer_result(done.returncode, done.stdout + done.stderr)
    if result.status != PASSED:
        result.details = _tail(done.stdout + done.stderr, 40)
    return result


# -- b: GPU benchmarks -----------------------------------------------------------------------------------
def step_ops(ctx: Context, limit_s: float) -> Result:
    if ctx.dry_run:
        args = ["--device", "cpu", "--tiny", "--reps", "1", "--wait", "0"]
        args += ["--cpu-dtypes", "float32", "bfloat16"]
    else:
        args = ["--device", "cuda", "--reps", "10", "--gpu-dtypes", "float32", "bfloat16"]
    return _script(ctx, "ops", ["ops.py", *args], limit_s)


def step_roi_pool(ctx: Context, limit_s: float) -> Result:
    if ctx.dry_run:
        args = ["--device", "cpu", "--tiny", "--reps", "1", "--wait", "0", "--sampling-ratio", "2"]
        args += ["--cpu-dtypes", "float32", "bfloat16"]
    else:
        args = ["--device", "cuda", "--reps", "10", "--gpu-dtypes", "float32", "bfloat16"]
    return _script(ctx, "roi_pool", ["roi_pool.py", *args], limit_s)


# -- c: training steps -----------------------------------------------------------------------------------
def wheel_file(folder: Path, distribution: str) -> Optional[Path]:
    """The wheel of ``distribution`` in ``folder`` (wheel names normalise - and . to _), if any."""
    stem = re.sub(r"[-_.]+", "_", distribution).lower()
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem + "-"))
    return found[-1] if found else None


def missing_modules(ctx: Context, modules: Sequence[str]) -> List[str]:
    """Those of ``modules`` that the steps' Python cannot import (tried in a subprocess, on their path)."""
    probe = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError:\n"
        "        print(m)\n"
    )
    done = subprocess.run(
        [ctx.python, "-c", probe, *modules], env=ctx.env(), capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"could not probe the installed packages: {done.stderr.strip()}")
    return done.stdout.split()


def install_carried_wheels(ctx: Context, limit_s: float) -> Tuple[Optional[Path], Optional[str]]:
    """Install the carried wheels whose modules are missing into a private folder.

    Returns (folder to put on PYTHONPATH or None when nothing was missing, reason to skip or None)."""
    missing = set(missing_modules(ctx, [module for module, _ in CARRIED_WHEELS]))
    needed = [dist for module, dist in CARRIED_WHEELS if module in missing]
    if not needed:
        return None, None
    absent = [dist for dist in needed if wheel_file(ctx.wheels, dist) is None]
    if absent:
        return None, (
            f"{', '.join(absent)}: not installed, and no wheel in {ctx.wheels} (run `make gpu-wheels` on a "
            "machine with internet and bring that folder along; see benchmarks/gpu_check.py)"
        )
    target = ctx.scratch / "train-deps"
    cmd = [ctx.python, "-m", "pip", "install", "--no-index", "--find-links", str(ctx.wheels), "--no-deps"]
    cmd += ["--target", str(target), "--disable-pip-version-check", *needed]
    done = run_logged(ctx, "train_deps", cmd, limit_s, ctx.env())
    if done.returncode != 0:
        why = f"{_exit_note(done)}; see train_deps.err.log"
        return None, f"pip could not install {', '.join(needed)} from {ctx.wheels} ({why})"
    return target, None


def summarize_train(markdown: str) -> str:
    """Like "deform/plain: frcnn 1.31x 1.45x (bf16), ...; 1 failed; skipped: deeplab (sklearn ...)"."""
    ratios: Dict[str, List[str]] = {}
    failed, skipped = 0, []
    for row in table_rows(markdown):
        if row[1].startswith("skipped:"):
            skipped.append(f"{row[0]} ({row[1].removeprefix('skipped: ')})")
        elif any("FAILED" in cell for cell in row):
            failed += 1
        else:
            ratios.setdefault(row[0], []).append(row[-1] + (" (bf16)" if row[3].startswith("bf16") else ""))
    parts = []
    if ratios:
        parts.append("deform/plain: " + ", ".join(f"{task} {' '.join(r)}" for task, r in ratios.items()))
    if failed:
        parts.append(f"{failed} failed")
    if skipped:
        parts.append("skipped: " + "; ".join(skipped))
    return "; ".join(parts) or "no rows"


def step_train(ctx: Context, limit_s: float) -> Result:
    start = time.monotonic()
    deps, reason = install_carried_wheels(ctx, limit_s)
    if reason:
        return Result(SKIPPED, reason)
    args = ["--device", ctx.device] + (["--tiny", "--warmup", "1", "--steps", "1"] if ctx.dry_run else [])
    left = limit_s - (time.monotonic() - start)
    result = _script(
        ctx, "train", ["train_steps.py", *args], left, summarize_train, extra_path=[deps] if deps else []
    )
    if deps:
        installed = ", ".join(sorted(p.name.removesuffix(".dist-info") for p in deps.glob("*.dist-info")))
        result.details += f"\n\nInstalled for this step from {ctx.wheels.name}/: {installed}."
    return result


# -- f: profiler split -----------------------------------------------------------------------------------
def summarize_profile(markdown: str) -> str:
    """Like "forward 207 µs + backward 187 µs of device work; host 142 µs + 164 µs per call"."""
    rows = {row[0]: row for row in table_rows(markdown)}
    if not {"forward", "backward"} <= rows.keys():
        return "no split table"
    fwd, bwd = rows["forward"], rows["backward"]
    return f"forward {fwd[4]} + backward {bwd[4]} of device work; host {fwd[5]} + {bwd[5]} per call"


def step_profile(ctx: Context, limit_s: float) -> Result:
    shape, reps = (["2", "8", "8"], "2") if ctx.dry_run else (["32", "512", "7"], "20")
    args = ["profile_ops.py", "--device", ctx.device, "--split", "--shape", *shape, "--dtype", "bfloat16"]
    return _script(ctx, "profile", [*args, "--reps", reps], limit_s, summarize_profile)


STEPS: Tuple[Step, ...] = (
    Step("tests", "GPU tests (tests/ops/cuda)", True, 150, 120, step_tests),
    Step("self_check", "Self-check (python -m dcn.ops.check)", True, 30, 90, step_self_check),
    Step("determinism", "Deterministic mode", True, 45, 90, step_determinism),
    Step("sanitizer", "compute-sanitizer memcheck", True, 100, 30, step_sanitizer),
    Step("ops", "deform_conv2d benchmark", False, 60, 90, step_ops),
    Step("roi_pool", "deform_roi_pool benchmark", False, 35, 90, step_roi_pool),
    Step("train", "Training steps, deform vs plain", False, 90, 300, step_train),
    Step("profile", "Profiler split, one ResNet-sized bfloat16 layer", False, 25, 90, step_profile),
)


# -- running the steps, the verdict ----------------------------------------------------------------------
def run_step(ctx: Context, step: Step) -> Result:
    """Run one step within its limit and what is left of the budget; never raises."""
    log = ctx.out / f"{step.name}.log"
    for stale in (log, ctx.out / f"{step.name}.err.log"):  # an earlier run's, into the same --out
        stale.unlink(missing_ok=True)
    start = time.monotonic()
    left = ctx.deadline - start
    limit = min(step.dry_limit_s if ctx.dry_run else step.limit_s, left)
    if left < MIN_STEP_S:
        result = Result(SKIPPED, f"out of time: {max(left, 0):.0f} s left of the run's --budget")
    else:
        try:
            result = step.run(ctx, limit)
        except Exception as error:  # a bug in this script's step: that step's failure, not the run's end
            result = Result(FAILED, f"gpu_check.py error: {type(error).__name__}: {error}")
            with open(ctx.out / f"{step.name}.err.log", "a") as err:
                traceback.print_exc(file=err)
    result.seconds, result.limit_s = time.monotonic() - start, max(limit, 0)
    if not log.exists():  # a step that ran no command: its log says why
        log.write_text(f"{result.status}: {result.summary}\n")
    return result


def failures(results: Sequence[Tuple[Step, Result]], dry_run: bool) -> List[str]:
    """The steps that fail the run: failed or timed-out checks; in the dry run, any step."""
    return [
        step.name
        for step, result in results
        if result.status in (FAILED, TIMED_OUT) and (step.check or dry_run)
    ]


def exit_code(results: Sequence[Tuple[Step, Result]], dry_run: bool) -> int:
    return 1 if failures(results, dry_run) else 0


# -- the report ------------------------------------------------------------------------------------------
ENV_PROBE = r"""
import json, platform, sys
info = {"python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}"
except Exception as e:
    info["torch"] = f"unusable: {type(e).__name__}: {e}"
for name in ("torchvision", "cupy", "lightning", "torchmetrics", "hydra", "omegaconf"):
    try:
        info[name] = __import__(name).__version__
    except Exception as e:
        info[name] = f"not available ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
print(json.dumps(info))
"""


def environment(ctx: Context) -> Dict[str, object]:
    """Versions and the GPU, probed in a subprocess (importing torch and CuPy can fail or hang)."""
    info: Dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    }
    try:
        done = subprocess.run(
            [ctx.python, "-c", ENV_PROBE], env=ctx.env(), capture_output=True, text=True, timeout=120
        )
        info.update(json.loads(done.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError) as error:
        info["torch"] = f"environment probe failed: {error}"
    info["driver"] = _command_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    commit = _command_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _command_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    info["source"] = (
        f"git {commit}{' with local changes' if dirty else ''}" if commit else "not a git checkout"
    )
    return info


def _command_line(cmd: Sequence[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""


def render_report(
    info: Dict[str, object], results: Sequence[Tuple[Step, Result]], dry_run: bool, out: Path
) -> str:
    """The markdown report: the machine, the verdict, a table of the steps, then each step's section."""
    failed = failures(results, dry_run)
    if failed:
        verdict = f"**FAILED**: {', '.join(failed)}"
    elif dry_run:
        verdict = "**PASSED**: every step that ran passed"
    else:
        verdict = "**PASSED**: every correctness check that ran passed (benchmarks: see their status)"
    lines = ["# dcn GPU check", ""]
    if dry_run:
        lines += [
            "**DRY RUN on the CPU** (`--dry-run`): every step at tiny sizes, to prove the script and the",
            "code it drives work. No number in this report is a measurement.",
            "",
        ]
    facts = [
        ("date", info.get("date")),
        ("GPU", info.get("gpu") or "none"),
        ("driver", info.get("driver") or "n/a (no nvidia-smi)"),
        ("torch", f"{info.get('torch')} (CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')})"),
        ("torchvision", info.get("torchvision")),
        ("CuPy", info.get("cupy")),
        ("Lightning / torchmetrics", f"{info.get('lightning')} / {info.get('torchmetrics')}"),
        ("Python", info.get("python")),
        ("dcn source", info.get("source")),
        ("verdict", verdict),
    ]
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in facts), ""]
    lines += [
        "## Steps",
        "",
        "| step | kind | status | time | limit | result |",
        "|---|---|---|---:|---:|---|",
    ]
    for step, r in results:
        kind = "check" if step.check else "benchmark"
        timing = f"{r.seconds:.0f} s | {r.limit_s:.0f} s"
        lines.append(f"| [{step.title}](#{step.name}) | {kind} | {r.status} | {timing} | {r.summary} |")
    for step, r in results:
        logs = [n for n in (f"{step.name}.log", f"{step.name}.err.log") if (out / n).exists()]
        links = ", ".join(f"[{n}]({n})" for n in logs) or "none"
        lines += ["", f'<a id="{step.name}"></a>', f"## {step.title}", ""]
        lines += [f"_{r.status}, {r.seconds:.0f} s of {r.limit_s:.0f} s; logs: {links}._", ""]
        lines.append(r.details or r.summary)
    return "\n".join(lines).rstrip() + "\n"


# -- make gpu-wheels -------------------------------------------------------------------------------------
def download_wheels(folder: Path) -> List[Path]:
    """Fill ``folder`` with pure-Python wheels of CARRIED_WHEELS at the versions this Python has."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for _, dist in CARRIED_WHEELS:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{dist} is not installed in {sys.executable}: run `make install` first")
        stem = re.sub(r"[-_.]+", "_", dist).lower()
        for old in folder.glob("*.whl"):  # one version per distribution: pip would install the newest
            if old.name.lower().startswith(stem + "-") and old.name.split("-")[1] != version:
                old.unlink()
        pin = f"{dist}=={version}"
        pip = [sys.executable, "-m", "pip"]
        download = [*pip, "download", "--only-binary=:all:", "--no-deps", "--dest", str(folder), pin]
        if subprocess.run(download).returncode != 0:
            # No wheel on the index (antlr4-python3-runtime 4.9.3 is a source archive only): build one.
            print(f"no wheel of {pin} on the index: building one from its source archive")
            if subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(folder), pin]).returncode != 0:
                raise SystemExit(f"could not download or build a wheel of {pin}")
        wheel = wheel_file(folder, dist)
        if wheel is None or not wheel.name.endswith("-none-any.whl"):
            raise SystemExit(f"{pin}: expected a pure-Python (none-any) wheel in {folder}, found {wheel}")
        wheels.append(wheel)
    return wheels


# -- main ------------------------------------------------------------------------------------------------
def run_steps(
    ctx: Context, info: Dict[str, object], only: Optional[Sequence[str]]
) -> List[Tuple[Step, Result]]:
    """Run the steps in order; the report is rewritten after each, so a run killed midway leaves one."""
    results: List[Tuple[Step, Result]] = []
    for step in STEPS:
        if only and step.name not in only:
            continue
        result = run_step(ctx, step)
        results.append((step, result))
        print(f"{step.name}: {result.status} ({result.seconds:.0f} s) {result.summary}", flush=True)
        (ctx.out / "report.md").write_text(render_report(info, results, ctx.dry_run, ctx.out))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report and logs (default gpu_report/)")
    p.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="carried wheels (default gpu_wheels/)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes (CI)")
    p.add_argument(
        "--budget", type=float, help=f"seconds for all steps (default {DEFAULT_BUDGET_S:.0f}; dry run 900)"
    )
    p.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], help="run these steps only")
    p.add_argument("--download-wheels", action="store_true", help="fill --wheels (make gpu-wheels; internet)")
    args = p.parse_args(argv)
    if args.download_wheels:
        wheels = download_wheels(args.wheels.resolve())
        print(f"{len(wheels)} wheels in {args.wheels}: {', '.join(w.name for w in wheels)}")
        return 0

    start = time.monotonic()
    budget = args.budget or (900.0 if args.dry_run else DEFAULT_BUDGET_S)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"gpu_check: cannot create --out {args.out}: {error}", file=sys.stderr)
        return 2
    out, wheels = args.out.resolve(), args.wheels.resolve()
    scratch = Path(tempfile.mkdtemp(prefix="dcn-gpu-check-"))
    ctx = Context(out=out, wheels=wheels, dry_run=args.dry_run, deadline=start + budget, scratch=scratch)
    try:
        info = environment(ctx)
        if not args.dry_run and not info.get("cuda_available"):
            print(
                f"gpu_check: torch sees no CUDA device here (torch {info.get('torch')}, CUDA "
                f"{info.get('cuda')}); on a machine without a GPU run `make gpu-check DRY=1` (--dry-run)",
                file=sys.stderr,
            )
            return 2
        mode = "dry run on the CPU" if args.dry_run else str(info.get("gpu"))
        print(f"gpu_check: {mode}; budget {budget:.0f} s; report in {out}/report.md", flush=True)
        results = run_steps(ctx, info, args.only)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    failed = failures(results, args.dry_run)
    verdict = f"FAILED: {', '.join(failed)}" if failed else "passed"
    print(f"gpu_check: {verdict} after {time.monotonic() - start:.0f} s; report in {out}/report.md")
    return exit_code(results, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
