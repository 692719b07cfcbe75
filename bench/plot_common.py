"""What the bench plot scripts (plot_acceptance.py, plot_gpu_run.py, plot_paging.py, plot_transport.py) share:
matplotlib without a display, a run's heading, the PNG written beside its JSON, and the command line (JSON files
in, the PNGs' paths printed)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def heading(what: str, run: dict[str, Any], date: bool = True) -> str:
    """"fargpu WHAT, GPU, driver D, commit C[, YYYY-MM-DD]" from a run's JSON ("?" for what it lacks)."""
    text = f"fargpu {what}, {run.get('gpu', '?')}, driver {run.get('driver', '?')}, commit {run.get('commit', '?')}"
    return text + (f", {str(run.get('date', '?'))[:10]}" if date else "")


def save_beside(fig: Figure, path: Path, **savefig: Any) -> Path:
    """Writes fig as a PNG beside the JSON at path (same name, .png), closes it and returns the PNG's path."""
    out = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, **savefig)
    plt.close(fig)
    return out


def main(plot: Callable[[Path], Path], description: str | None) -> None:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("results", nargs="+", type=Path, help="JSON files of runs")
    for path in ap.parse_args().results:
        print(plot(path))
