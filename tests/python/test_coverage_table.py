"""The generated driver-API coverage table (client_stub/generated/COVERAGE.md, README summary) against the stub it
describes: every function it calls refused is one the generated stub answers with fgc_unsupported (and every
other is not), every refused one has a reason, every export appears once, and the README's counts are the
table's. Its freshness against annotations.toml is test_codegen's `python -m codegen --check`."""

from __future__ import annotations

import re
from collections import Counter

from e2e_helpers import REPO

TABLE = REPO / "client_stub" / "generated" / "COVERAGE.md"
EXPORTS = REPO / "client_stub" / "generated" / "exports.c"


def _rows() -> list[tuple[str, str, str, str]]:
    rows = []
    for line in TABLE.read_text().splitlines():
        m = re.match(r"^\| `(\w+)` \| (yes|) \| ([a-z ]+) \| (.*) \|$", line)
        if m:
            rows.append((m.group(1), m.group(2), m.group(3), m.group(4)))
    return rows


def test_refused_rows_are_exactly_the_stubs_unsupported_exports() -> None:
    rows = _rows()
    names = [r[0] for r in rows]
    exported = [ln.strip() for ln in (REPO / "codegen/data/libcuda-exports.txt").read_text().splitlines() if ln.strip()]
    assert sorted(names) == sorted(exported) and len(set(names)) == len(names)
    unsupported = set(re.findall(r'fgc_unsupported\("(\w+)", &logged\)', EXPORTS.read_text()))
    refused = {r[0] for r in rows if r[2] == "refused"}
    assert refused == unsupported
    assert all(r[3].strip() for r in rows if r[2] in ("refused", "emulated")), "a refused or emulated row, no note"
    assert {r[2] for r in rows} <= {"forwarded", "answered in the stub", "emulated", "refused"}


def test_readme_counts_are_the_tables() -> None:
    rows = _rows()
    counts = Counter(r[2] for r in rows)
    block = (REPO / "README.md").read_text().split("<!-- coverage:begin -->")[1].split("<!-- coverage:end -->")[0]
    for status in ("forwarded", "answered in the stub", "emulated", "refused"):
        m = re.search(rf"^\| {status} \| (\d+) \| (\d+) \|$", block, re.M)
        assert m and int(m.group(1)) == counts[status], status
    assert f"| all | {len(rows)} |" in block


def test_areas_of_issue_14_are_not_refused() -> None:
    status = {r[0]: r[2] for r in _rows()}
    for name in ("cuMemAllocManaged", "cuMemHostGetDevicePointer_v2", "cuGraphAddMemcpyNode", "cuGraphAddMemsetNode",
                 "cuProfilerStart", "cuOccupancyMaxPotentialBlockSize", "cuMemGetAllocationGranularity", "cuMemCreate",
                 "cuMemMap", "cuMemSetAccess", "cuMemAddressReserve", "cuMemRelease", "cuMemRetainAllocationHandle"):
        assert status[name] != "refused", name
