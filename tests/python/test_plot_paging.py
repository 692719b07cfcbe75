"""bench/plot_paging.py turns a committed paging run into its PNG (speed against session size), as the bench does
after each GPU run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from e2e_helpers import REPO


def test_paging_run_plots_to_a_png(tmp_path: Path) -> None:
    runs = sorted((REPO / "bench" / "results").glob("paging_gpu-*-d5991f5.json"))
    assert runs, "the committed paging run is missing"
    src = tmp_path / runs[0].name
    shutil.copy(runs[0], src)
    res = subprocess.run([sys.executable, str(REPO / "bench" / "plot_paging.py"), str(src)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    png = src.with_suffix(".png")
    assert res.stdout.strip() == str(png)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
