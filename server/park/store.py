"""The park store interface: named objects written from and read into file descriptors in large parts, in
parallel, each part checksummed (SHA-256), and a manifest that the store confirms before a write counts.

An object is written from (fd, offset, length) — a session's paged memory lies in the node's host page pool (a
memfd) or a spill file — in parts of `part_size` bytes, `parallel` at a time. The object's manifest (its size, part
size and each part's SHA-256) is written last: an object without a manifest is incomplete, and `put` returns only
once the store has confirmed the manifest and every part. Reading checks every part against the manifest and fails
on any difference, so state is never restored from bytes that are not the ones written."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

DEFAULT_PART = 64 << 20
DEFAULT_PARALLEL = 8
MANIFEST = ".manifest"  # object NAME's manifest is NAME.manifest


class ParkStoreError(Exception):
    """A park store could not write, confirm or read an object; the message says which and why."""


@dataclass(frozen=True)
class Manifest:
    key: str
    size: int
    part_size: int
    part_sha256: list[str]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> Manifest:
        """The manifest of object `key`, as stored."""
        try:
            d = json.loads(data)
            m = cls(str(d["key"]), int(d["size"]), int(d["part_size"]), [str(h) for h in d["part_sha256"]])
        except (ValueError, KeyError, TypeError) as e:
            raise ParkStoreError(f"a park manifest is not readable: {e}") from None
        if m.size < 0 or m.part_size <= 0 or len(m.part_sha256) != parts_of(m.size, m.part_size):
            raise ParkStoreError(f"the park manifest of {m.key!r} is inconsistent")
        if m.key != key:
            raise ParkStoreError(f"the manifest of {key!r} names {m.key!r}")
        return m


def parts_of(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


def check_key(key: str) -> str:
    if not key or len(key) > 512 or key.startswith("/") or ".." in key.split("/") or "\\" in key or "\0" in key:
        raise ParkStoreError(f"not a valid park object name: {key!r}")
    return key


def read_part(fd: int, offset: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.pread(fd, n - len(out), offset + len(out))
        if not chunk:
            raise ParkStoreError(f"the source ended {n - len(out)} bytes early")
        out += chunk
    return bytes(out)


def source_part(fd: int, offset: int, length: int, part_size: int, i: int) -> bytes:
    """Part i of the `length` bytes of fd from `offset` that `put` writes (b"" for an empty object's one part)."""
    lo = i * part_size
    return read_part(fd, offset + lo, min(part_size, length - lo)) if length else b""


def write_part(fd: int, offset: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        k = os.pwrite(fd, view, offset)
        view = view[k:]
        offset += k


def run_parts(n_parts: int, parallel: int, work: Callable[[int], str]) -> list[str]:
    """Runs work(i) for every part, `parallel` at a time; returns their results in part order."""
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, n_parts))) as ex:
        return list(ex.map(work, range(n_parts)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PartStore(ABC):
    """What the stores share: the small-object calls, made through their fd-based put and get."""

    @abstractmethod
    def put(self, key: str, fd: int, offset: int, length: int) -> Manifest: ...

    @abstractmethod
    def get(self, key: str, fd: int, offset: int = 0) -> Manifest: ...

    def put_bytes(self, key: str, data: bytes) -> Manifest:
        """A small object (a session's state description)."""
        fd = os.memfd_create("fargpu-park-bytes", os.MFD_CLOEXEC)
        try:
            write_part(fd, 0, data)
            return self.put(key, fd, 0, len(data))
        finally:
            os.close(fd)

    def get_bytes(self, key: str) -> bytes:
        fd = os.memfd_create("fargpu-park-bytes", os.MFD_CLOEXEC)
        try:
            m = self.get(key, fd, 0)
            return read_part(fd, 0, m.size) if m.size else b""
        finally:
            os.close(fd)

    def link(self, key: str, path: Path) -> Manifest | None:
        """Makes `path` a checked local file of object `key` without copying its bytes, where the store can (a
        directory store on the same filesystem); None where it cannot (the caller copies it with get)."""
        return None


class ParkStore(Protocol):
    """Where parked sessions' state lives. Blocking calls: run them in a thread from an event loop."""

    name: str

    def put(self, key: str, fd: int, offset: int, length: int) -> Manifest:
        """Writes `length` bytes of fd from `offset` as object `key`; returns once the store confirmed it all."""
        ...

    def get(self, key: str, fd: int, offset: int = 0) -> Manifest:
        """Reads object `key` into fd at `offset`, every part checked against its manifest."""
        ...

    def put_bytes(self, key: str, data: bytes) -> Manifest: ...

    def get_bytes(self, key: str) -> bytes: ...

    def link(self, key: str, path: Path) -> Manifest | None:
        """Object `key` as the file `path`, every part checked, with no copy, where the store can; else None."""
        ...

    def delete(self, key: str) -> None:
        """Removes the object and its manifest (no error when absent)."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """The complete objects (those with a manifest) whose names start with prefix."""
        ...

    def partial(self, prefix: str = "") -> dict[str, float]:
        """Objects whose write never completed (bytes, or a temporary file, but no manifest) whose names start with
        prefix, with the seconds since they were last written: what a node that died mid-write left."""
        ...
