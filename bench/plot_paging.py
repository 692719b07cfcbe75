"""Plots a paging run: `python bench/plot_paging.py bench/results/paging_gpu-*.json` writes a PNG beside each JSON
with page-out and page-in speed (GB/s) against session size, to host memory and to disk, the driver's process
checkpoint and restore on the same sessions, and the disk's own raw write and read speed as reference lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plot_common import heading, main, plt, save_beside


def series(run: dict[str, Any]) -> tuple[list[float], dict[str, list[float | None]]]:
    sizes: list[float] = []
    lines: dict[str, list[float | None]] = {k: [] for k in (
        "page-out to host", "page-in from host", "page-out to disk", "page-in from disk",
        "driver checkpoint", "driver restore")}
    for name, rec in sorted(run["sessions"].items(), key=lambda kv: float(kv[0].removesuffix("GiB"))):
        if "host" not in rec:
            continue
        sizes.append(float(name.removesuffix("GiB")))
        host, disk, ck = rec.get("host", {}), rec.get("disk", {}), rec.get("driver_checkpoint", {})
        lines["page-out to host"].append(host.get("pageout_host_GBps"))
        lines["page-in from host"].append(host.get("pagein_host_GBps"))
        lines["page-out to disk"].append(disk.get("pageout_disk_GBps"))
        lines["page-in from disk"].append(disk.get("pagein_disk_GBps"))
        lines["driver checkpoint"].append(ck.get("checkpoint_GBps"))
        lines["driver restore"].append(ck.get("restore_GBps"))
    return sizes, lines


def plot(path: Path) -> Path:
    run = json.loads(path.read_text())
    sizes, lines = series(run)
    if not sizes:
        raise SystemExit(f"{path}: no session figures to plot")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for label, ys in lines.items():
        pts = [(x, y) for x, y in zip(sizes, ys, strict=True) if y is not None]
        if pts:
            style = "--" if label.startswith("driver") else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
    for key, label in (("disk_raw_write_GBps", "disk raw write"), ("disk_raw_read_GBps", "disk raw read")):
        if run.get(key):
            ax.axhline(run[key], color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"{label} {run[key]:.2f}", (sizes[0], run[key]), fontsize=7, color="grey",
                        textcoords="offset points", xytext=(2, 2))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{s:g} GiB" for s in sizes])
    ax.set_xlabel("session size")
    ax.set_ylabel("GB/s")
    ax.set_title(heading("paging", run, date=False), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_beside(fig, path)


if __name__ == "__main__":
    main(plot, __doc__)
