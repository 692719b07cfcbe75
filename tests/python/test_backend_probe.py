"""The node server's driver probe starts before its modules load (server/backend.py start_probe, from
fargpu/entry.py) and `select` uses that probe's answer rather than starting another; a probe nobody needs (the
command chose the simulated device) is ended. The simulated device's library stands in for the real driver here (it
answers cuInit and cuDeviceGetCount like one); nothing here touches a GPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fargpu import paths
from fargpu.server import backend


@pytest.fixture
def sim_as_driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(backend, "find_real_driver", lambda: paths.sim_lib())
    yield
    backend._drop_early()


def test_requested_backend_reads_the_command_line_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FARGPU_BACKEND", raising=False)
    assert backend.requested_backend(["--listen", "127.0.0.1:0"]) == "auto"
    assert backend.requested_backend(["--backend", "sim"]) == "sim"
    assert backend.requested_backend(["--backend=cuda", "--pool", "http://x"]) == "cuda"
    assert backend.requested_backend(["--backend", "sim", "--help"]) == ""
    monkeypatch.setenv("FARGPU_BACKEND", "sim")
    assert backend.requested_backend([]) == "sim"
    assert backend.requested_backend(["--backend", "cuda"]) == "cuda"  # the flag wins, as typer has it


def test_select_takes_the_probe_started_early(sim_as_driver: None, monkeypatch: pytest.MonkeyPatch) -> None:
    backend.start_probe("cuda")
    early = backend._early
    assert early is not None and early[0] == str(paths.sim_lib())
    started: list[object] = []
    monkeypatch.setattr(backend, "_start", lambda driver: started.append(driver))  # a second probe would land here
    chosen = backend.select("cuda")
    assert chosen.name == "cuda" and chosen.device_count == 1 and chosen.driver == paths.sim_lib()
    assert started == [] and backend._early is None and early[1].returncode == 0


def test_an_unneeded_early_probe_is_ended(sim_as_driver: None) -> None:
    backend.start_probe("sim")
    assert backend._early is None  # the simulated device needs no probe
    backend.start_probe("auto")
    early = backend._early
    assert early is not None
    assert backend.select("sim").name == "sim"
    assert backend._early is None and early[1].returncode is not None  # ended and reaped
