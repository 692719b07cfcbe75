"""The node's host page pool takes no session's memory while its pages are still being allocated (the prefaulter
writes zeros over it front to back, which would overwrite a page-out made meanwhile): a page-out then spills to disk,
and one that asks for the host pool waits for it, bounded."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

from fargpu.server import pager as pager_mod
from fargpu.server.lease_ledger import HEADER, SLOT
from fargpu.server.pager import Pager


async def _page_out_command(p: Pager, sid: str, to: str) -> tuple[str, str]:
    r, w = os.pipe()
    try:
        task = asyncio.create_task(p.page_out(sid, w, to))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if task.done():
                return "", task.result()
            os.set_blocking(r, False)
            try:
                cmd = os.read(r, 4096).decode()
            except BlockingIOError:
                continue
            where = cmd.split()[1]
            p.on_status(sid, f"paged {where} {1 << 20} 1000 0")
            return cmd, await task
        task.cancel()
        raise AssertionError("no page-out command")
    finally:
        os.close(r)
        os.close(w)


def _charge(p: Pager, sid: str, n: int) -> None:
    slot = p.resident.sessions[sid]
    struct.pack_into("<Q", p.resident.mem, HEADER + SLOT * slot, n)


async def test_page_out_spills_to_disk_while_the_pool_is_being_allocated(tmp_path: Path) -> None:
    p = Pager(1 << 30, 64 << 20, tmp_path / "spill")
    try:
        p.admit("s1", "standard", None)
        _charge(p, "s1", 1 << 20)
        p.pool.ready.clear()  # as while the prefaulter runs
        cmd, res = await _page_out_command(p, "s1", "auto")
        assert cmd.startswith("pageout disk "), cmd
        assert res.startswith("paged disk"), res
    finally:
        p.close()


async def test_page_out_to_host_waits_for_the_pool_then_gives_a_clear_reason(tmp_path: Path) -> None:
    pager_mod.POOL_READY_WAIT_S = 0.2  # type: ignore[misc]
    p = Pager(1 << 30, 64 << 20, tmp_path / "spill")
    try:
        p.admit("s1", "standard", None)
        _charge(p, "s1", 1 << 20)
        p.pool.ready.clear()
        cmd, res = await _page_out_command(p, "s1", "host")
        assert cmd == "" and res.startswith("failed the node's host page pool is still being set up"), res
        p.pool.ready.set()
        cmd, res = await _page_out_command(p, "s1", "host")
        assert cmd.startswith("pageout host "), cmd
    finally:
        pager_mod.POOL_READY_WAIT_S = 60.0  # type: ignore[misc]
        p.close()
