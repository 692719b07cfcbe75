"""Paging under the pool's control, end to end: a real pool manager (embedded store and real Redis), a real node
server on the simulated device, and real clients holding device memory through the stub. An operator pages a
session out and in over REST and with `fargpu pool page-out|page-in`; `fargpu pool sessions` shows the state and
the bytes; the client's next call finds every byte at the same address; a guaranteed lease is never idle-paged
while a standard one with a 1 s idle timeout is; a node's --overcommit reaches placement; node and pool metrics
count what happened. (The simulated device proves the control path, not GPU speed: see bench/.)"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _live_pool import ADMIN, ENROL, HOLDER, NODE_ID, LivePool, MiB, _key, child_env, fargpu_argv, metric, store_args


@pytest.fixture(params=["embedded", "redis"])
def live_pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LivePool]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    pool = LivePool.start(tmp_path, store_args=store_args(request.param, url), node_args=["--host-page-pool", "256M"])
    yield pool
    pool.stop()


@pytest.fixture
def embedded_pool(tmp_path: Path) -> Iterator[LivePool]:
    pool = LivePool.start(tmp_path, store_args=store_args("embedded", None), node_args=["--host-page-pool", "256M"])
    yield pool
    pool.stop()


def test_admin_rest_page_out_then_the_next_call_pages_in_with_every_byte(live_pool: LivePool) -> None:
    pool = live_pool
    lease = pool.lease(vram="256M")
    assert lease["idle_timeout_s"] == 300.0  # the pool's default (fargpu pool-manager --idle-timeout)
    holder = pool.hold(lease)
    sid = pool.session_of(lease["lease_id"])["session_id"]
    before = pool.wait_session(sid, lambda s: s["resident_bytes"] >= holder.held_bytes, "resident bytes reported")
    assert before["state"] == "resident" and before["paged_bytes"] == 0

    # Admin only: no token, a wrong one, an unknown session, a bad target.
    path = f"/v1/admin/sessions/{sid}/page-out"
    assert pool.admin_post(path, token=None).status_code == 401
    assert pool.admin_post(path, token="wrong").status_code == 403
    r = pool.admin_post("/v1/admin/sessions/no-such-session/page-out")
    assert r.status_code == 404 and "no-such-session" in r.json()["reason"]
    assert pool.admin_post(path, {"to": "tape"}).status_code == 422
    assert pool.get("/v1/sessions")[0]["state"] == "resident"  # none of those paged anything

    r = pool.admin_post(path, {"to": "host"})
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["node_id"] == NODE_ID and accepted["action"] == "page-out" and accepted["to"] == "host"
    paged = pool.wait_session(sid, lambda s: s["page_command_id"] == accepted["command_id"], "the page-out outcome")
    assert paged["state"] == "paged-host", paged
    assert paged["page_result"].startswith("paged host ")
    assert paged["paged_bytes"] >= holder.held_bytes and paged["resident_bytes"] < holder.held_bytes

    # What operators see, as they run it.
    listed = {s["session_id"]: s for s in pool.cli_json("sessions")}
    assert listed[sid]["state"] == "paged-host" and listed[sid]["paged_bytes"] > 0
    table = pool.cli("sessions")
    assert table.returncode == 0 and "paged-host" in table.stdout, table.stdout + table.stderr
    pool_metrics = pool.get_text("/metrics")
    assert (metric(pool_metrics, "fargpu_pool_node_vram_paged_bytes", node=NODE_ID) or 0) >= holder.held_bytes
    assert metric(pool_metrics, "fargpu_pool_node_sessions_paged", node=NODE_ID) == 1

    assert holder.check() == "SAME"  # the next call pages the session back in: every byte, every address
    back = pool.wait_session(sid, lambda s: s["state"] == "resident", "resident again")
    assert back["paged_bytes"] == 0 and back["resident_bytes"] >= holder.held_bytes

    node_metrics = pool.node_metrics()
    assert metric(node_metrics, "fargpu_node_pageouts_total", where="host") == 1
    assert metric(node_metrics, "fargpu_node_pageins_total", where="host") == 1
    assert metric(node_metrics, "fargpu_node_pageout_bytes_count", where="host") == 1
    assert (metric(node_metrics, "fargpu_node_pageout_bytes_sum", where="host") or 0) >= holder.held_bytes
    assert metric(node_metrics, "fargpu_node_pagein_seconds_count", where="host") == 1
    assert metric(node_metrics, "fargpu_node_pageouts_total", where="disk") is None  # nothing went to disk
    for secret in (ADMIN, ENROL, lease["token"]):  # no token or key in any label, on either side
        assert secret not in node_metrics + pool_metrics


def test_cli_page_out_and_page_in_wait_for_the_outcome(embedded_pool: LivePool) -> None:
    pool = embedded_pool
    holder = pool.hold(pool.lease(vram="256M"))
    sid = pool.session_of(pool.get("/v1/leases")[0]["lease_id"])["session_id"]

    out = pool.cli_json("page-out", sid, "--to", "host", "--wait", "30")
    assert out["session_id"] == sid and out["state"] == "paged-host" and out["paged_bytes"] >= holder.held_bytes
    # Already paged: where it was asked to go, so it succeeds, and the node's answer says it did nothing.
    again = pool.cli_json("page-out", sid, "--wait", "30")
    assert again["state"] == "paged-host" and again["page_result"] == "failed the session is paged-host"
    assert again["page_command_id"] != out["page_command_id"]

    back = pool.cli_json("page-in", sid, "--wait", "30")
    assert back["state"] == "resident" and back["paged_bytes"] == 0 and back["page_result"].startswith("resident ")
    assert holder.check() == "SAME"

    # To disk, without waiting: the command is queued and the spill file does the round trip.
    queued = pool.cli("page-out", sid, "--to", "disk")
    assert queued.returncode == 0 and f"page-out to disk of session {sid} queued" in queued.stdout, queued.stdout
    pool.wait_session(sid, lambda s: s["state"] == "paged-disk", "paged to disk")
    assert holder.check() == "SAME"
    pool.wait_session(sid, lambda s: s["state"] == "resident", "resident again")
    assert metric(pool.node_metrics(), "fargpu_node_pageouts_total", where="disk") == 1

    # Errors: one line of text, or JSON under --json; the admin token is needed.
    r = pool.cli("page-out", "no-such-session", "--json")
    assert r.returncode == 1 and json.loads(r.stdout) == {
        "error": "not_found",
        "status": 404,
        "reason": "session 'no-such-session' not found: no node reports it",
    }
    r = pool.cli("page-in", sid, admin=False)
    assert r.returncode == 1 and "not an admin key" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = pool.cli("page-in", sid, "--json", admin=False)
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == 403


def test_guaranteed_lease_is_never_idle_paged_while_a_standard_one_is(embedded_pool: LivePool) -> None:
    pool = embedded_pool
    holders = {}
    for qos in ("guaranteed", "standard"):
        env = child_env(FARGPU_POOL_URL=pool.url)
        argv = fargpu_argv("run", "--vram", "256M", "--qos", qos, "--idle-timeout", "1", "--label", qos, "--",
                           sys.executable, "-P", "-c", HOLDER)  # fmt: skip
        holders[qos] = pool.start_holder(argv, env)
    leases = {lease["label"]: lease for lease in pool.get("/v1/leases")}
    assert {q: (lease["qos"], lease["idle_timeout_s"]) for q, lease in leases.items()} == {
        "guaranteed": ("guaranteed", 1.0),
        "standard": ("standard", 1.0),
    }
    sids = {q: pool.session_of(lease["lease_id"])["session_id"] for q, lease in leases.items()}

    paged = pool.wait_session(sids["standard"], lambda s: s["state"] == "paged-host", "the idle standard session")
    assert paged["paged_bytes"] >= holders["standard"].held_bytes
    # The guaranteed session has been idle for as long, and longer still now: it stays resident.
    kept = pool.wait_session(sids["guaranteed"], lambda s: s["idle_s"] >= 3.0, "the guaranteed session idle 3 s")
    assert kept["state"] == "resident" and kept["paged_bytes"] == 0, kept
    # Counted before the checks below: the call that checks pages the standard session in, and a second later
    # its idle timeout pages it out again.
    assert metric(pool.node_metrics(), "fargpu_node_pageouts_total", where="host") == 1
    assert holders["standard"].check() == "SAME" and holders["guaranteed"].check() == "SAME"


def test_node_overcommit_flag_reaches_placement(tmp_path: Path) -> None:
    gib = 1 << 30
    pool = LivePool.start(tmp_path, store_args=store_args("embedded", None), node_args=["--overcommit", "2"],
                          node_env={"FARGPU_SIM_MEM_BYTES": str(gib)})  # fmt: skip
    try:
        node = pool.get(f"/v1/nodes/{NODE_ID}")
        assert node["overcommit"] == 2.0 and node["gpus"][0]["total_bytes"] == gib
        g = pool.lease(vram_bytes=256 * MiB, qos="guaranteed")
        a = pool.lease(vram_bytes=768 * MiB)
        b = pool.lease(vram_bytes=768 * MiB)  # 1.75 GiB booked on a 1 GiB GPU: the node pages idle sessions
        assert g["node_id"] == a["node_id"] == b["node_id"] == NODE_ID
        r = httpx.post(pool.url + "/v1/leases", json={"vram_bytes": 16 * MiB, "qos": "guaranteed"}, timeout=10,
                       headers=_key())
        assert r.status_code == 503 and "guaranteed" in r.json()["reason"], r.text
        c = pool.lease(vram_bytes=256 * MiB, qos="best_effort")  # 2 GiB booked: the ratio's limit
        assert c["node_id"] == NODE_ID
        r = httpx.post(pool.url + "/v1/leases", json={"vram_bytes": 16 * MiB}, timeout=10, headers=_key())
        assert r.status_code == 503 and "the pool is full" in r.json()["reason"], r.text
        node = pool.get(f"/v1/nodes/{NODE_ID}")
        assert node["reserved"] == {"0": 2 * gib} and node["guaranteed_reserved"] == {"0": 256 * MiB}
        assert metric(pool.get_text("/metrics"), "fargpu_pool_node_overcommit_ratio", node=NODE_ID) == 2.0
    finally:
        pool.stop()
