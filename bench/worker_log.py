"""What the node's workers said about the sessions a run made: each worker logs, when its session ends, how many
records it replayed in how many frames and what share of the connected time replaying took (server/replay/session.c).
bench/acceptance.py reads the lines that a case's remote runs added to the node server's log, so a result says
whether the node (a busy worker) or the client (a worker waiting for frames) set a slow case's pace."""

from __future__ import annotations

import re
import time
from pathlib import Path

LINE = re.compile(r"served (\d+) records in (\d+) frames; replaying them took ([\d.]+) s of the ([\d.]+) s connected")


def log_size(log: Path | None) -> int:
    """Where the log ends now (0 without a log): the mark to read a run's lines from."""
    try:
        return log.stat().st_size if log else 0
    except OSError:
        return 0


def sessions_since(log: Path | None, mark: int, wait_s: float = 3.0) -> list[dict[str, float]]:
    """The worker reports logged after `mark`, waiting up to wait_s for the first (a worker logs just after its
    client exits). Empty without a log."""
    if log is None:
        return []
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with log.open("rb") as f:
                f.seek(mark)
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        found = [{"records": int(m.group(1)), "frames": int(m.group(2)), "busy_s": float(m.group(3)),
                  "connected_s": float(m.group(4))} for m in LINE.finditer(text)]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def summary(sessions: list[dict[str, float]]) -> dict[str, float]:
    """The sessions' totals and the share of their connected time the workers spent replaying; {} for none."""
    if not sessions:
        return {}
    busy = sum(s["busy_s"] for s in sessions)
    connected = sum(s["connected_s"] for s in sessions)
    return {"sessions": len(sessions), "records": int(sum(s["records"] for s in sessions)),
            "frames": int(sum(s["frames"] for s in sessions)), "busy_s": round(busy, 6),
            "connected_s": round(connected, 6), "busy_share": round(busy / connected, 4) if connected else 0.0}
