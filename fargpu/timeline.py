"""Startup marks for benchmarks: where the seconds from a lease at zero nodes to its first kernel go.

With FARGPU_TIMELINE=PATH in the environment, `mark(event, detail)` appends one line `<unix time> <pid> <event>
[detail]` to PATH (one O_APPEND write, so the pool manager, its node servers and their session workers, which
inherit the variable, can share one file); without it `mark` does nothing. bench/scale_zero_gpu.py sets it and
turns the file into its per-round breakdown. Details name nodes, leases and sessions, never a secret. Only the
standard library is imported here: a session worker and a starting node server import this module early."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

ENV = "FARGPU_TIMELINE"


class Mark(NamedTuple):
    at: float  # unix time
    pid: int
    event: str
    detail: str = ""


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def mark(event: str, detail: str = "", at: float | None = None) -> None:
    """Records `event` (no spaces) at `at` (default: now) when FARGPU_TIMELINE is set; never raises."""
    path = os.environ.get(ENV)
    if not path:
        return
    when = time.time() if at is None else at
    line = f"{when:.6f} {os.getpid()} {event} {' '.join(detail.split())}".rstrip() + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def process_start() -> float | None:
    """Unix time this process was started (exec'd), from /proc (10 ms resolution); None where /proc cannot say."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime: clock ticks after boot
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        # the middle of its tick: the kernel counts whole ticks, so the start lies within the tick after `ticks`
        return time.time() - (since_boot - (ticks + 0.5) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def mark_process_start(event: str, detail: str = "") -> None:
    """Records `event` at this process's start (see process_start), when FARGPU_TIMELINE is set."""
    if enabled():
        mark(event, detail, process_start())


def read(path: Path | str) -> list[Mark]:
    """The marks in `path`, in time order (malformed lines are skipped)."""
    out: list[Mark] = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split(" ", 3)
        try:
            out.append(Mark(float(parts[0]), int(parts[1]), parts[2], parts[3] if len(parts) > 3 else ""))
        except (ValueError, IndexError):
            continue
    return sorted(out, key=lambda m: m.at)
