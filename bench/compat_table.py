"""Generates README.md's compatibility table from the latest acceptance result of the whole suite
(bench/acceptance.py's JSON, kept as bench/results/acceptance*.json; a selection's run never becomes the table):
one row per program (or PyTorch script), one column per cudart mode, the GPU, driver and date in the heading, the
nvidia-smi check, and the median throughput ratios of each case's newest repeated run (--repeat N), with that
run's GPU, date and commit. Programs the whole-suite run did not have (cases added since) come from the newest later
run of a selection that has them, in a table of their own where each row names its run.
Replaces the text between the compat-table markers in README.md; with --check, changes nothing and exits 1 when
the README's table differs from what the latest results give.

Usage: python3 bench/compat_table.py [--check] [--readme README.md] [--results bench/results] [--json FILE]
Exit status: 0 written or fresh, 1 stale (--check), 2 no result or no markers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- compat-table:begin -->"
END = "<!-- compat-table:end -->"
MODES = ("static", "shared")

Json = dict[str, Any]


def is_full_suite(data: Json) -> bool:
    """A run of the whole suite: no --only selection and the PyTorch scripts not skipped."""
    sel = data.get("selection") or {}
    return not sel.get("only") and not sel.get("skip_torch")


def is_repeated(data: Json) -> bool:
    """A run whose throughputs are medians of several runs per side (acceptance.py --repeat N, N > 1)."""
    return any(int(c.get("repeat", 1)) > 1 for c in data.get("cases", []))


def results_newest_first(results: Path, want: Callable[[Json], bool]) -> list[tuple[Json, Path]]:
    """The acceptance*.json in results that `want` accepts, newest first by "date" (ISO 8601, so text order is time
    order), the file name breaking ties. Files that do not parse as an acceptance result are skipped."""
    found: list[tuple[str, str, Json, Path]] = []
    for path in results.glob("acceptance*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("cases"), list) and want(data):
            found.append((str(data.get("date", "")), path.name, data, path))
    found.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [(data, path) for _, _, data, path in found]


def latest_result(results: Path, want: Callable[[Json], bool] = is_full_suite) -> Path | None:
    """The newest acceptance result `want` accepts (by default: runs of the whole suite, so a selection run never
    becomes the table)."""
    found = results_newest_first(results, want)
    return found[0][1] if found else None


def program_of(case: Json) -> str:
    """The row a case belongs to: its name without the "@mode" suffix."""
    return str(case["name"]).rsplit("@", 1)[0] if case.get("kind") == "nvcc" else str(case["name"])


def cell(case: Json | None) -> str:
    if case is None:
        return "—"
    if case.get("pass"):
        return "pass" if case.get("outputs") == "identical" else "pass (within tolerance)"
    reason = str(case.get("reason") or "failed").replace("|", "\\|").replace("\n", " ")
    return f"FAIL: {reason[:80]}"


def ratios(cases: list[Json]) -> str:
    parts: list[str] = []
    for c in cases:
        for name, r in sorted(c.get("throughput", {}).get("ratio", {}).items()):
            parts.append(f"{name} {float(r):.2f}")
    return ", ".join(parts)


def smi_line(report: Json) -> list[str]:
    smi = report.get("nvidia_smi") or {}
    if not smi.get("ran"):
        return []
    q = smi.get("q") or {}
    verdict = "pass" if smi.get("pass") else "FAIL: " + "; ".join(smi.get("problems", []))[:200]
    return ["", f"nvidia-smi through the NVML shim ({verdict}): `-L` exit {smi.get('L_shim_rc')}, "
                f"{'identical to' if smi.get('L_identical') else 'differs from'} native; plain table exit "
                f"{smi.get('plain_shim_rc')} (GPU, bus id, driver and CUDA version as native); `-q` exit "
                f"{smi.get('q_shim_rc')}, {q.get('same', 0)} of {q.get('native_fields', 0)} fields as native "
                f"(the others mostly N/A: not visible through the driver API; `-q` is reported, not judged)."]


def where(report: Json, source: str) -> str:
    """A run, as a row names it: its GPU, date, commit and file."""
    return (f"{report.get('gpu', 'unknown GPU')}, {str(report.get('date', 'undated'))[:10]}, "
            f"{str(report.get('commit', 'unknown'))[:7]} (`{source}`)")


def medians_block(runs: list[tuple[Json, str]]) -> list[str]:
    """Median throughput ratios: for each case and measure, the newest repeated run that measured it (runs newest
    first), with the GPU, date, commit and file of that run."""
    rows: list[str] = []
    seen: set[tuple[str, str]] = set()
    for report, source in runs:
        run = where(report, source)
        for c in report.get("cases", []):
            if int(c.get("repeat", 1)) <= 1:
                continue
            t = c.get("throughput") or {}
            for name, r in sorted((t.get("ratio") or {}).items()):
                if (c["name"], name) in seen:
                    continue
                seen.add((c["name"], name))
                n = len((t.get("runs") or {}).get("native", []))
                rows.append(f"| {c['name']} | {name} | {t['native'][name]:g} | {t['remote'][name]:g} | "
                            f"{float(r):.2f} | {n} | {run} |")
    if not rows:
        return []
    return ["", "Throughput medians (for each case, its newest repeated run: each side run N times, the order "
                "alternating):", "",
            "| case | measure | native median | remote median | remote/native | N | run |",
            "|---|---|---|---|---|---|---|", *sorted(rows)]


def by_program(cases: list[Json]) -> tuple[dict[str, dict[str, Json]], dict[str, str]]:
    """Cases grouped into rows: program -> {cudart mode -> case}, and program -> kind."""
    rows: dict[str, dict[str, Json]] = {}
    kinds: dict[str, str] = {}
    for case in cases:
        prog = program_of(case)
        rows.setdefault(prog, {})[str(case.get("cudart"))] = case
        kinds[prog] = str(case.get("kind", ""))
    return rows, kinds


def row_cells(kind: str, by_mode: dict[str, Json]) -> str:
    """The static, shared and throughput cells of one program's row."""
    if kind == "nvcc":
        static, shared = cell(by_mode.get("static")), cell(by_mode.get("shared"))
    else:  # PyTorch links its own shared libcudart
        static, shared = "n/a", cell(next(iter(by_mode.values())))
    return f"{static} | {shared} | {ratios(list(by_mode.values()))}"


def later_block(report: Json, runs: list[tuple[Json, str]]) -> list[str]:
    """Programs the whole-suite `report` lacks, each from the newest run dated after it that has the program
    (runs newest first, each with its file name), with that run named on its row."""
    known = set(by_program(report["cases"])[0])
    since = str(report.get("date", ""))
    found: dict[str, str] = {}
    for data, source in runs:
        if str(data.get("date", "")) <= since:
            continue
        rows, kinds = by_program(data.get("cases", []))
        for prog in rows:
            if prog not in known and prog not in found:
                cells = row_cells(kinds[prog], rows[prog])
                found[prog] = f"| {prog} | {kinds[prog]} | {cells} | {where(data, source)} |"
    if not found:
        return []
    return ["", "Cases added since that run, from the newest later run that has each:", "",
            "| program | kind | cudart static | cudart shared | throughput remote/native | run |",
            "|---|---|---|---|---|---|", *(found[p] for p in sorted(found))]


def render(report: Json, source: str, medians: list[tuple[Json, str]] | None = None,
           later: list[tuple[Json, str]] | None = None) -> str:
    """The text between the markers (starting and ending with a newline); `medians` (repeated runs, newest first,
    each with its file name) adds the median throughput table, and `later` (every run, newest first, each with its
    file name) the programs added since `report`."""
    rows, kinds = by_program(report["cases"])
    total = len(report["cases"])
    passed = sum(1 for c in report["cases"] if c.get("pass"))
    out = [
        "",
        f"_Generated by `bench/compat_table.py` from `{source}`; do not edit by hand._",
        "",
        f"**{report.get('gpu', 'unknown GPU')} · driver {report.get('driver', 'unknown')} · "
        f"{str(report.get('date', 'undated'))[:10]}** (commit {report.get('commit', 'unknown')}): "
        f"{passed} of {total} cases pass.",
        "",
        "| program | kind | cudart static | cudart shared | throughput remote/native |",
        "|---|---|---|---|---|",
    ]
    for prog in sorted(rows, key=lambda p: (kinds[p] != "nvcc", p)):
        out.append(f"| {prog} | {kinds[prog]} | {row_cells(kinds[prog], rows[prog])} |")
    out += ["", "PyTorch scripts run on torch's own shared libcudart; \"n/a\" marks the static column for them."]
    mc = report.get("module_cache") or {}
    if mc:
        out += ["", f"Module cache: `{mc.get('case')}` sent {mc.get('first_session_image_bytes')} bytes of images in "
                    f"its first session and {mc.get('second_session_image_bytes')} in its second (hashes only)."]
    out += smi_line(report)
    if later:
        out += later_block(report, later)
    if medians:
        out += medians_block(medians)
    out.append("")
    return "\n".join(out)


def named(path: Path, readme: Path) -> str:
    """path relative to the README's folder when it lies below it, else its file name."""
    try:
        return str(path.resolve().relative_to(readme.resolve().parent))
    except ValueError:
        return path.name


def replace_block(text: str, block: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"README has no '{BEGIN}' ... '{END}' block")
    return text[: start + len(BEGIN)] + block + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--json", type=Path, help="use this acceptance result instead of the latest in --results")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's table is stale; write nothing")
    a = ap.parse_args(argv)
    path = a.json or latest_result(a.results)
    if path is None:
        print(f"no acceptance result (acceptance*.json) in {a.results}", file=sys.stderr)
        return 2
    report = json.loads(path.read_text())
    runs = [] if a.json else [(data, named(p, a.readme)) for data, p in results_newest_first(a.results, lambda d: True)]
    medians = [(data, name) for data, name in runs if is_repeated(data)]
    source = named(path, a.readme)
    text = a.readme.read_text()
    try:
        new = replace_block(text, render(report, source, medians, runs))
    except ValueError as e:
        print(f"{a.readme}: {e}", file=sys.stderr)
        return 2
    if a.check:
        if new != text:
            print(f"{a.readme}: the compatibility table is stale; run python3 bench/compat_table.py", file=sys.stderr)
            return 1
        print(f"{a.readme}: the compatibility table matches {source}")
        return 0
    if new != text:
        a.readme.write_text(new)
    print(f"{a.readme}: compatibility table from {source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
