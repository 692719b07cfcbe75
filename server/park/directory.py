"""The directory park store (the default): objects are files under a root directory — local disk on one machine,
or a filesystem mounted on every node. An object is written to a temporary file in parts, in parallel (pwrite at
each part's offset), fsynced, and renamed into place; its manifest (`NAME.manifest`) is written the same way after
it, and the directory is fsynced. Only an object whose manifest is in place is complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .store import (
    DEFAULT_PARALLEL,
    DEFAULT_PART,
    MANIFEST,
    Manifest,
    ParkStoreError,
    PartStore,
    check_key,
    parts_of,
    read_part,
    run_parts,
    sha256,
    source_part,
    write_part,
)

VERIFY_PIECE = 8 << 20  # link's reads: a part is hashed in pieces of this size


class DirectoryParkStore(PartStore):
    name = "directory"

    def __init__(self, root: str | Path, part_size: int = DEFAULT_PART, parallel: int = DEFAULT_PARALLEL) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.part_size = part_size
        self.parallel = parallel

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fsync_dir(self, d: Path) -> None:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_file(self, path: Path, fill: Callable[[int], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fill(fd)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        os.close(fd)
        os.replace(tmp, path)

    def put(self, key: str, fd: int, offset: int, length: int) -> Manifest:
        path = self._path(key)
        n = parts_of(length, self.part_size)
        hashes: list[str] = []

        def fill(out: int) -> None:
            os.ftruncate(out, length)

            def part(i: int) -> str:
                data = source_part(fd, offset, length, self.part_size, i)
                write_part(out, i * self.part_size, data)
                return sha256(data)

            hashes.extend(run_parts(n, self.parallel, part))

        try:
            manifest_path = path.with_name(path.name + MANIFEST)
            with contextlib.suppress(FileNotFoundError):
                manifest_path.unlink()  # the old object stops being complete before it is replaced
            self._write_file(path, fill)
            m = Manifest(key, length, self.part_size, hashes)
            self._write_file(manifest_path, lambda out: write_part(out, 0, m.to_json()))
            self._fsync_dir(path.parent)
        except OSError as e:
            raise ParkStoreError(f"cannot write park object {key!r} under {self.root}: {e}") from None
        if path.stat().st_size != length:  # confirmed: the file the store holds has every byte
            raise ParkStoreError(f"park object {key!r} has {path.stat().st_size} bytes after writing, not {length}")
        return m

    def _manifest(self, key: str) -> Manifest:
        path = self._path(key)
        try:
            return Manifest.from_json(path.with_name(path.name + MANIFEST).read_bytes(), key)
        except FileNotFoundError:
            raise ParkStoreError(f"park object {key!r} is not in {self.root} (or was never completed)") from None

    def get(self, key: str, fd: int, offset: int = 0) -> Manifest:
        m = self._manifest(key)
        try:
            src = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ParkStoreError(f"cannot open park object {key!r}: {e}") from None
        try:
            def part(i: int) -> str:
                lo = i * m.part_size
                data = read_part(src, lo, min(m.part_size, m.size - lo)) if m.size else b""
                if sha256(data) != m.part_sha256[i]:
                    raise ParkStoreError(f"part {i} of park object {key!r} does not match its checksum")
                write_part(fd, offset + lo, data)
                return ""

            run_parts(len(m.part_sha256), self.parallel, part)
        finally:
            os.close(src)
        return m

    def link(self, key: str, path: Path) -> Manifest | None:
        """A hard link to the object at `path` (the restoring node's spill file: its memory is read once, by the
        page-in, instead of being copied first), every part checked against the manifest by reading it, which
        leaves it in the page cache for that page-in. None when the two are on different filesystems, or links are
        refused; a part that does not match raises and leaves no link. The object stays the store's: the node
        only reads the file and deletes its own name for it."""
        m = self._manifest(key)
        try:
            os.link(self._path(key), path)
        except FileNotFoundError:
            raise ParkStoreError(f"park object {key!r} is not in {self.root}") from None
        except OSError:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_size != m.size:
                    raise ParkStoreError(f"park object {key!r} is {os.fstat(fd).st_size} bytes, not {m.size}")
                # The whole file is asked for at once (the kernel reads ahead in parallel, as a cold shared or local
                # disk needs); each part is read in pieces into its thread's one small buffer and hashed as it comes,
                # with no copy (16 threads hold 128 MiB in all, whatever the part size).
                os.posix_fadvise(fd, 0, m.size, os.POSIX_FADV_WILLNEED)
                local = threading.local()

                def part(i: int) -> str:
                    lo = i * m.part_size
                    end = lo + min(m.part_size, m.size - lo)
                    if getattr(local, "buf", None) is None:
                        local.buf = memoryview(bytearray(VERIFY_PIECE))
                    h = hashlib.sha256()
                    while lo < end:
                        k = os.preadv(fd, [local.buf[: min(VERIFY_PIECE, end - lo)]], lo)
                        if k <= 0:
                            raise ParkStoreError(f"park object {key!r} ended {end - lo} bytes early")
                        h.update(local.buf[:k])
                        lo += k
                    if h.hexdigest() != m.part_sha256[i]:
                        raise ParkStoreError(f"part {i} of park object {key!r} does not match its checksum")
                    return ""

                run_parts(len(m.part_sha256), max(self.parallel, 16), part)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        return m

    def delete(self, key: str) -> None:
        path = self._path(key)
        tmps = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []  # a write cut short
        for p in (path.with_name(path.name + MANIFEST), path, *tmps):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if path.parent != self.root:
            with contextlib.suppress(OSError):  # a session's folder goes with its last object
                path.parent.rmdir()

    def partial(self, prefix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        now = time.time()
        for p in self.root.rglob("*"):
            name = p.name
            if not p.is_file() or name.endswith(MANIFEST):
                continue
            if name.startswith(".") and name.endswith(".tmp"):  # .NAME.HEX.tmp, NAME maybe "x.manifest"
                name = name[1:].rsplit(".", 2)[0]
                name = name[: -len(MANIFEST)] if name.endswith(MANIFEST) else name
            elif p.with_name(name + MANIFEST).exists():
                continue
            key = str(p.parent.relative_to(self.root) / name)
            if key.startswith(prefix):
                with contextlib.suppress(OSError):
                    age = now - p.stat().st_mtime
                    out[key] = min(out.get(key, age), age)
        return out

    def list(self, prefix: str = "") -> list[str]:
        out = []
        for p in self.root.rglob("*" + MANIFEST):
            key = str(p.relative_to(self.root))[: -len(MANIFEST)]
            if key.startswith(prefix) and not p.name.startswith("."):
                out.append(key)
        return sorted(out)
