"""Plots an acceptance run: `python bench/plot_acceptance.py bench/results/acceptance-*.json` writes a PNG beside each
JSON (tests/acceptance/run_gpu.sh results) with, where the run measured them, the applications' throughput through
fargpu as a fraction of native (PyTorch models with random weights: images/s, tokens/s, TFLOPS; 1 = native), and
every case's wall time native and through fargpu, each bar marked pass or fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.patches import Patch
from plot_common import heading, main, plt, save_beside


def throughput_ratios(run: dict[str, Any]) -> dict[str, float]:
    """`case: metric` -> remote / native throughput, for every case that measured one on both sides."""
    out = {}
    for case in run.get("cases", []):
        tp = case.get("throughput") or {}
        native, remote = tp.get("native") or {}, tp.get("remote") or {}
        for metric, n in native.items():
            r = remote.get(metric)
            if n and r:
                out[f"{case['name']}: {metric}"] = r / n
    return out


def plot(path: Path) -> Path:
    run: dict[str, Any] = json.loads(path.read_text())
    cases = [c for c in run.get("cases", []) if c.get("native_s") is not None and c.get("remote_s") is not None]
    if not cases:
        raise SystemExit(f"{path}: no cases with native and remote times to plot")
    ratios = throughput_ratios(run)
    heights = ([0.35 * len(ratios) + 0.8] if ratios else []) + [0.2 * len(cases) + 0.8]
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, sum(heights) + 1.0), dpi=110, squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    panels = len(heights)
    if ratios:
        ax = axes[0][0]
        names = list(ratios)
        vals = [ratios[n] for n in names]
        ax.barh(names, vals, color=["tab:green" if v >= 0.9 else "tab:orange" for v in vals])
        ax.axvline(1.0, color="black", linewidth=1)
        ax.invert_yaxis()
        for y, v in enumerate(vals):
            ax.annotate(f"{v:.2f}", (v, y), fontsize=7, va="center", textcoords="offset points", xytext=(3, 0))
        ax.set_xlim(0, max(1.2, max(vals) * 1.15))
        ax.set_xlabel("throughput through fargpu / native (1 = native)")
        ax.set_title("application throughput ratio", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    ax = axes[panels - 1][0]
    ys = range(len(cases))
    h = 0.4
    ax.barh([y - h / 2 for y in ys], [c["native_s"] for c in cases], h, color="tab:blue")
    ax.barh([y + h / 2 for y in ys], [c["remote_s"] for c in cases], h,
            color=["tab:orange" if c.get("pass") else "tab:red" for c in cases])
    ax.set_yticks(list(ys), [f"{c['name']} {'pass' if c.get('pass') else 'FAIL'}" for c in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("wall time of the whole program, seconds")
    summary = run.get("summary") or {}
    ax.set_title(f"cases: {summary.get('passed', '?')}/{summary.get('total', '?')} passed", fontsize=9)
    ax.legend(handles=[Patch(color="tab:blue", label="native"), Patch(color="tab:orange", label="through fargpu"),
                       Patch(color="tab:red", label="through fargpu, failed")], fontsize=7, loc="center right")
    ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(heading("acceptance", run), fontsize=10)
    return save_beside(fig, path)


if __name__ == "__main__":
    main(plot, __doc__)
