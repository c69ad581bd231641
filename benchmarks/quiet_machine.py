"""The machine a benchmark runs on, and whether anything else was running: timings taken while
other jobs share the CPUs are not worth printing as results.

Every benchmark table is wrapped in :class:`LoadGuard`:

    with LoadGuard("deform_conv2d, cpu, float32") as guard:
        table = run_table(...)
    print(guard.header())   # machine, load, and a NOT QUIET mark when other jobs ran
    print(table)

The 1-minute load average is printed, but it cannot tell other jobs from the benchmark's own
threads (a table run on 2 threads leaves it near 2 for the next one), so the guard measures other
processes directly: the machine's busy CPU time (/proc/stat) minus this process's and its
children's. Before the table it waits (up to ``wait_s``) until the machine is idle (others' share
over 2 s at most ``max_others``, 5 %) or the load average is at most ``max_load`` (0.5); the table
is marked NOT QUIET when neither held before it, or when other processes took more than
``max_others`` of the CPU time during it. With ``strict=True`` the guard raises instead
(``make bench`` prints marked tables, ``ARGS=--strict`` refuses them).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import time
from typing import Optional

import torch

MAX_LOAD = 0.5
MAX_OTHERS = 0.05


def add_guard_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark passes to its LoadGuards: --max-load, --wait, --strict."""
    parser.add_argument(
        "--max-load",
        type=float,
        default=MAX_LOAD,
        help="1-minute load average above which a CPU table is marked NOT QUIET",
    )
    parser.add_argument(
        "--wait", type=float, default=120.0, help="seconds to wait for the load to drop first"
    )
    parser.add_argument(
        "--strict", action="store_true", help="refuse (exit 1) instead of marking a busy table"
    )


class BusyMachine(RuntimeError):
    """Raised by a strict LoadGuard when other jobs shared the CPUs."""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def machine_line() -> str:
    """'AMD EPYC (2 cores), torch 2.x, 2 threads, ISA AVX512, 2026-12-01 01:23 UTC'."""
    isa = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{cpu_model()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, ISA {isa}, {now}"
    )


def _busy_jiffies() -> Optional[int]:
    """CPU time (clock ticks) the whole machine spent busy since boot."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class _OthersClock:
    """Share of the machine's CPU time taken by other processes since construction."""

    def __init__(self) -> None:
        self._t0, self._busy0, self._own0 = time.monotonic(), _busy_jiffies(), _own_cpu_seconds()

    def share(self) -> Optional[float]:
        busy1, own1, elapsed = _busy_jiffies(), _own_cpu_seconds(), time.monotonic() - self._t0
        if self._busy0 is None or busy1 is None or elapsed <= 0:
            return None
        busy = (busy1 - self._busy0) / os.sysconf("SC_CLK_TCK")
        return max(0.0, busy - (own1 - self._own0)) / (elapsed * (os.cpu_count() or 1))


def wait_for_quiet(
    max_load: float = MAX_LOAD, max_others: float = MAX_OTHERS, wait_s: float = 120.0
) -> tuple[Optional[float], Optional[float], bool]:
    """Wait (up to ``wait_s``) until other processes leave the CPUs idle or the load average is at
    most ``max_load``. Returns (1-minute load, others' share over the last 2 s, whether quiet)."""
    deadline = time.monotonic() + wait_s
    while True:
        clock = _OthersClock()
        time.sleep(2)
        others, load = clock.share(), load_average()
        quiet = (others is not None and others <= max_others) or (load is not None and load <= max_load)
        if quiet or time.monotonic() >= deadline:
            return load, others, quiet


class LoadGuard:
    def __init__(
        self,
        title: str,
        max_load: float = MAX_LOAD,
        max_others: float = MAX_OTHERS,
        wait_s: float = 120.0,
        strict: bool = False,
    ) -> None:
        self.title, self.max_load, self.max_others = title, max_load, max_others
        self.wait_s, self.strict = wait_s, strict
        self.load_before: Optional[float] = None
        self.others_before: Optional[float] = None
        self.quiet_before = True
        self.others: Optional[float] = None  # share of the machine's CPU time other processes took

    def __enter__(self) -> "LoadGuard":
        self.load_before, self.others_before, self.quiet_before = wait_for_quiet(
            self.max_load, self.max_others, self.wait_s
        )
        self._clock = _OthersClock()
        return self

    def __exit__(self, *exc) -> None:
        self.others = self._clock.share()
        if exc[0] is None and self.strict and not self.quiet:
            raise BusyMachine(f"{self.title}: {self.load_note()}; not printing the table")

    @property
    def quiet(self) -> bool:
        return self.quiet_before and (self.others is None or self.others <= self.max_others)

    def load_note(self) -> str:
        def pct(v: Optional[float]) -> str:
            return "n/a" if v is None else f"{100 * v:.0f} %"

        load = "n/a" if self.load_before is None else f"{self.load_before:.2f}"
        return (
            f"1-min load before: {load}; CPU time taken by other processes just before: "
            f"{pct(self.others_before)}, during the table: {pct(self.others)}"
        )

    def header(self) -> str:
        mark = (
            ""
            if self.quiet
            else (
                f"\n\n**NOT QUIET: other jobs shared the CPUs (limits: {100 * self.max_others:.0f} % of the "
                f"CPU time, or a load average of {self.max_load} before the table); do not use these "
                "numbers as results.**"
            )
        )
        return f"_{machine_line()}; {self.load_note()}_{mark}"
