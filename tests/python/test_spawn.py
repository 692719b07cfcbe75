"""server/spawn.py: workers start through posix_spawn with exactly the descriptors they are given, at the
numbers asked for, and their exit (or the signal that killed them) is awaited on the event loop."""

from __future__ import annotations

import asyncio
import os

from fargpu.server.spawn import spawn


def test_spawned_child_gets_mapped_fds_and_reports_its_exit() -> None:
    async def main() -> tuple[int, bytes, int]:
        r, w = os.pipe()
        other_r, other_w = os.pipe()  # not mapped: the child must not hold it
        proc = spawn(["/bin/sh", "-c", "echo hello >&3; ls /proc/self/fd | wc -l >&3; exit 7"], {3: w},
                     {"PATH": "/usr/bin:/bin"})
        os.close(w)
        rc = await proc.wait()
        out = os.read(r, 4096)
        for fd in (r, other_r, other_w):
            os.close(fd)
        killed = spawn(["/bin/sh", "-c", "kill -SEGV $$"], {}, {"PATH": "/usr/bin:/bin"})
        return rc, out, await killed.wait()

    rc, out, killed_rc = asyncio.run(main())
    lines = out.decode().split()
    assert rc == 7 and lines[0] == "hello"
    # ls sees 0, 1 (the pipe to wc), 2, 3 and its own directory descriptor: nothing of the parent leaked in.
    assert int(lines[1]) == 5, out
    assert killed_rc == -11
