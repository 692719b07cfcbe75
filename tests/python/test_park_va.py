"""Parking where the driver chooses device addresses: the simulated device places address reservations as the real
driver was probed to (FARGPU_SIM_VA=heap, server/sim/sim_vaheap.c: requested addresses ignored, the lowest free
range of one per-process range handed out). A parked session still comes back at its old addresses in a new worker
on a new node server: its allocations were carved from one address block of the session (server/replay/va_block.c),
the node's workers run without address-space randomisation (server/worker.py), and the restore gets the block back
by filling the free ranges the driver offers below it (server/replay/park_place.c).

This proves the mechanism against a model of the driver; whether the real driver behaves as modelled is what
bench/park_gpu.sh shows on a GPU. Nothing here says anything about a GPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import NodeServer, start_server, stop_server
from test_park import PROGRAM, _run, _wait_log  # the same session as the directory-store test

HEAP = {"FARGPU_SIM_VA": "heap"}


def _worker_personality(s: NodeServer) -> int:
    pids = re.findall(r"-> worker (\d+)", s.log_text())
    assert pids, s.log_text()[-3000:]
    return int(Path(f"/proc/{pids[-1]}/personality").read_text(), 16)


@pytest.mark.parametrize("pool", ["memfd", "vmm"])
def test_a_parked_session_gets_its_addresses_back_where_the_driver_ignores_requested_addresses(tmp_path: Path,
                                                                                               pool: str) -> None:
    """With either host pool: a memfd, or driver memory (the default on a GPU), whose parked pages go through a
    spill file."""
    (tmp_path / "ref").mkdir()
    ref = start_server(tmp_path / "ref", env_extra=HEAP)
    try:
        _ready, plain, _ = _run(ref.client_env())
    finally:
        stop_server(ref)
    assert plain.startswith("RESULT bad= prio -1 flags 1 ctx True"), plain

    store = tmp_path / "park-store"
    a = start_server(tmp_path, "--idle-page-out", "1", "--idle-park", "1", "--park-store", str(store),
                     "--host-pool-kind", pool, env_extra=HEAP)
    port = int(a.endpoint.rsplit(":", 1)[1])
    b: list[NodeServer] = []

    def park_then_replace_node() -> None:
        _wait_log(a, r"park of session \w+: parked sessions/\w+ (\d+)")
        if pool == "vmm":
            assert "pinned host memory from the driver" in a.log_text(), a.log_text()[-2000:]
        assert "not at its arena's" in a.log_text()  # the model ignored the arena's address for the session's block
        a.proc.kill()
        a.proc.wait()
        (tmp_path / "b").mkdir()
        b.append(start_server(tmp_path / "b", "--park-store", str(store), "--host-pool-kind", pool, port=port,
                              env_extra=HEAP))

    try:
        ready, out, err = _run(a.client_env(FARGPU_RESUME_TIMEOUT_S="60", FARGPU_LOG="info"), park_then_replace_node)
        log_b = b[0].log_text()
        assert out == plain, out + "\n" + err + "\n" + log_b[-3000:]  # every byte at every old address, the kernel
        assert "resumed on" in err, err
        # the restoring worker's range starts below the parking worker's (its bias), so getting the session's
        # address block back took filling: asking alone would have failed; every allocation was in the block
        m = re.search(r"address block is back at 0x[0-9a-f]+ \((\d+) free ranges filled below it\)", log_b)
        assert m and int(m.group(1)) >= 1, log_b[-3000:]
        m = re.search(r"placed (\d+) allocations at their old addresses: (\d+) in the address block, (\d+) as asked",
                      log_b)
        assert m and m.group(1) == m.group(2) and int(m.group(1)) >= 1, log_b[-3000:]
        assert _worker_personality(b[0]) & 0x0040000, "the restoring worker must run without randomisation"
    finally:
        stop_server(a)
        for s in b:
            stop_server(s)


def test_workers_are_randomised_when_the_node_says_so(tmp_path: Path) -> None:
    s = start_server(tmp_path, "--no-stable-addresses")
    try:
        p = subprocess.Popen([sys.executable, "-P", "-c", PROGRAM], env=s.client_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert p.stdout is not None
        assert p.stdout.readline().startswith("READY")
        assert _worker_personality(s) & 0x0040000 == 0
        p.communicate("go\n", timeout=60)
    finally:
        stop_server(s)


def test_workers_start_without_randomisation_once_and_the_agent_keeps_its_own(tmp_path: Path) -> None:
    """The agent starts each worker without randomisation (server/spawn.py), so the worker never executes itself a
    second time (a whole interpreter start on every session's way to its first call), and the agent's own
    personality is left as it was."""
    s = start_server(tmp_path)
    try:
        p = subprocess.Popen([sys.executable, "-P", "-c", PROGRAM], env=s.client_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert p.stdout is not None
        assert p.stdout.readline().startswith("READY")
        assert _worker_personality(s) & 0x0040000
        pid = re.findall(r"-> worker (\d+)", s.log_text())[-1]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"FARGPU_WORKER_STABLE_VA=1" in environ
        assert not [e for e in environ if e.startswith(b"FARGPU_WORKER_REEXECUTED")], "the worker executed itself again"
        assert int(Path(f"/proc/{s.proc.pid}/personality").read_text(), 16) & 0x0040000 == 0
        p.communicate("go\n", timeout=60)
    finally:
        stop_server(s)
