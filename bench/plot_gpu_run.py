"""Plots a GPU run of the microbenchmarks: `python bench/plot_gpu_run.py bench/results/gpu_run-*.json` writes a PNG
beside each JSON (bench/gpu_run.sh draws it after each run where matplotlib is installed) with three panels:

- throughput through fargpu as a fraction of native, per microbenchmark (1 = native speed; for a latency the
  fraction is native time / remote time, for a rate or a bandwidth remote / native);
- the transport's latencies: the sync round trip, a launch then sync and 64-byte copies, native and through fargpu,
  beside the bare TCP and unix-socket ping-pong of the same host (the floor a remote call cannot beat);
- bandwidth of 256 MiB copies, native (pageable, pinned) and through fargpu (GB/s)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.ticker
from plot_common import heading, main, plt, save_beside

LABELS = {
    "sync_rtt_us": "sync round trip", "launch_rate_empty_per_s": "launch rate (no params)",
    "launch_rate_4param_per_s": "launch rate (4 params)", "launch_then_sync_us": "launch + sync",
    "htod_64b_us": "64 B host->device", "dtoh_64b_us": "64 B device->host",
    "htod_256mib_pageable_gbps": "256 MiB H->D pageable", "dtoh_256mib_pageable_gbps": "256 MiB D->H pageable",
    "htod_256mib_pinned_gbps": "256 MiB H->D pinned", "dtoh_256mib_pinned_gbps": "256 MiB D->H pinned",
    "alloc_free_1mib_us": "1 MiB alloc + free",
}


def fraction_of_native(native: dict[str, float], remote: dict[str, float]) -> dict[str, float]:
    """Remote throughput / native throughput for every metric both runs have (a time is 1 / throughput)."""
    out = {}
    for key, label in LABELS.items():
        n, r = native.get(key), remote.get(key)
        if not n or not r:
            continue
        out[label] = n / r if key.endswith("_us") else r / n
    return out


def plot(path: Path) -> Path:
    run: dict[str, Any] = json.loads(path.read_text())
    native, remote = run.get("micro_native") or {}, run.get("micro_remote") or {}
    frac = fraction_of_native(native, remote)
    if not frac:
        raise SystemExit(f"{path}: no native and remote microbenchmarks to plot")
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 5), dpi=110, gridspec_kw={"width_ratios": [1.4, 1, 0.9]})

    names = list(frac)
    vals = [frac[n] for n in names]
    colors = ["tab:green" if v >= 0.7 else "tab:orange" if v >= 0.2 else "tab:red" for v in vals]
    ax1.barh(names, vals, color=colors)
    ax1.axvline(1.0, color="black", linewidth=1)
    ax1.set_xscale("log")
    ax1.set_xlabel("throughput through fargpu / native (log; 1 = native)")
    ax1.invert_yaxis()
    for y, v in enumerate(vals):
        ax1.annotate(f"{v:.2f}" if v >= 0.1 else f"{v:.3f}", (v, y), fontsize=7, va="center",
                     textcoords="offset points", xytext=(3, 0))
    ax1.set_title("throughput ratio", fontsize=9)
    ax1.grid(True, axis="x", alpha=0.3)

    lat = [k for k in ("sync_rtt_us", "launch_then_sync_us", "htod_64b_us", "dtoh_64b_us") if k in native]
    xs = range(len(lat))
    w = 0.38
    ax2.bar([x - w / 2 for x in xs], [native[k] for k in lat], w, label="native")
    ax2.bar([x + w / 2 for x in xs], [remote.get(k, 0) for k in lat], w, label="through fargpu (TCP)")
    floor = run.get("transport_floor") or {}
    for key, label, style in (("tcp_pingpong_64b_us", "TCP ping-pong", "--"),
                              ("unix_pingpong_64b_us", "unix ping-pong", ":")):
        if floor.get(key):
            ax2.axhline(floor[key], color="grey", linestyle=style, linewidth=1, label=f"{label} {floor[key]:.1f} us")
    ax2.set_xticks(list(xs), [LABELS[k] for k in lat], rotation=20, fontsize=8, ha="right")
    ax2.set_ylim(0, max([native[k] for k in lat] + [remote.get(k, 0) for k in lat] + list(floor.values())) * 1.5)
    ax2.set_ylabel("microseconds")
    ax2.set_title("transport latency", fontsize=9)
    ax2.legend(fontsize=7)
    ax2.grid(True, axis="y", alpha=0.3)

    groups = [("H->D", "htod"), ("D->H", "dtoh")]
    series = [("native pageable", native, "pageable"), ("native pinned", native, "pinned"),
              ("fargpu pageable", remote, "pageable"), ("fargpu pinned", remote, "pinned")]
    w = 0.2
    for i, (label, src, kind) in enumerate(series):
        ys = [src.get(f"{d}_256mib_{kind}_gbps", 0) for _, d in groups]
        ax3.bar([g + (i - 1.5) * w for g in range(len(groups))], ys, w, label=label)
    ax3.set_xticks(range(len(groups)), [g for g, _ in groups])
    ax3.set_yscale("log")
    ax3.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax3.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax3.set_ylabel("GB/s (log)")
    ax3.set_title("256 MiB copies", fontsize=9)
    ax3.legend(fontsize=7, loc="upper right")
    ax3.set_ylim(bottom=1, top=max(src.get(f"{d}_256mib_{k}_gbps", 0) for _, src, k in series for _, d in groups) * 4)
    ax3.grid(True, axis="y", alpha=0.3)

    fig.suptitle(heading("microbenchmarks", run), fontsize=10)
    return save_beside(fig, path)


if __name__ == "__main__":
    main(plot, __doc__)
