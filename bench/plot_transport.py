"""Plots a transport run: `python bench/plot_transport.py OUT/transport_gpu.json` writes a PNG beside the JSON
(bench/transport_gpu.sh draws it after each run where matplotlib is installed) with two panels:

- 256 MiB copies (host->device and device->host, pinned and pageable) in GB/s, natively and over each transport of
  the run (TCP with 1..N streams, the unix socket, shared memory), with the raw floors of the same run as lines;
- the sync round trip and 64-byte copies in microseconds per transport, with the bare TCP and unix ping-pong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plot_common import main, plt, save_beside

KINDS = [("htod_pinned", "H->D pinned"), ("dtoh_pinned", "D->H pinned"), ("htod_pageable", "H->D pageable"),
         ("dtoh_pageable", "D->H pageable")]
LATENCIES = [("sync_rtt", "sync round trip"), ("htod_64b", "64 B H->D"), ("dtoh_64b", "64 B D->H")]


def transports(figures: dict[str, float]) -> list[str]:
    """The transports the run measured, native first, in the order their figures appear."""
    seen: list[str] = []
    for key in figures:
        for kind, _ in KINDS:
            if key.startswith(kind + "_") and key.endswith("_GBps"):
                name = key[len(kind) + 1: -len("_GBps")]
                if name not in seen:
                    seen.append(name)
    return sorted(seen, key=lambda n: n != "native")


def plot(path: Path) -> Path:
    run: dict[str, Any] = json.loads(path.read_text())
    figures: dict[str, float] = run.get("figures") or {}
    names = transports(figures)
    if not names:
        raise SystemExit(f"{path}: no copy bandwidth figures to draw (is this a transport_gpu.json?)")
    floors: dict[str, float] = run.get("floors") or {}
    fig, (bw, lat) = plt.subplots(1, 2, figsize=(15, 5.5))
    width = 0.8 / len(KINDS)
    for i, (kind, label) in enumerate(KINDS):
        vals = [figures.get(f"{kind}_{n}_GBps") or 0.0 for n in names]
        bw.bar([x + i * width for x in range(len(names))], vals, width, label=label)
    for key, style in (("floor_tcp1_GBps", ":"), ("floor_unix_GBps", "--"), ("floor_memcpy_GBps", "-.")):
        if floors.get(key):
            bw.axhline(floors[key], linestyle=style, color="grey", linewidth=1)
            bw.annotate(key.removeprefix("floor_").removesuffix("_GBps") + " floor", (len(names) - 0.5, floors[key]),
                        fontsize=7, color="grey", ha="right", va="bottom")
    bw.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names)
    bw.set_ylabel("GB/s (256 MiB copies, median)")
    bw.set_title("bulk copies: native and through each transport")
    bw.legend(fontsize=8)
    lnames = [n for n in names if any(figures.get(f"{k}_{n}_us") for k, _ in LATENCIES)]
    lw = 0.8 / len(LATENCIES)
    for i, (key, label) in enumerate(LATENCIES):
        vals = [figures.get(f"{key}_{n}_us") or 0.0 for n in lnames]
        lat.bar([x + i * lw for x in range(len(lnames))], vals, lw, label=label)
    for key, style in (("floor_tcp_rtt_us", ":"), ("floor_unix_rtt_us", "--")):
        if floors.get(key):
            lat.axhline(floors[key], linestyle=style, color="grey", linewidth=1)
            lat.annotate(key.removeprefix("floor_").removesuffix("_us") + " ping-pong",
                         (len(lnames) - 0.5, floors[key]), fontsize=7, color="grey", ha="right", va="bottom")
    lat.set_xticks([x + 0.4 - lw / 2 for x in range(len(lnames))], lnames)
    lat.set_ylabel("microseconds (median)")
    lat.set_title("small calls")
    lat.legend(fontsize=8)
    fig.suptitle(f"{run.get('gpu', '?')} · driver {run.get('driver', '?')} · {run.get('date', '?')} · "
                 f"commit {run.get('commit', '?')} · backend {run.get('backend', '?')}", fontsize=9)
    return save_beside(fig, path, dpi=110)


if __name__ == "__main__":
    main(plot, __doc__.splitlines()[0])
