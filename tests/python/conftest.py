"""Fixtures for the end-to-end tests (helpers live in e2e_helpers.py, so test modules can import them
without colliding with tests/python/pool/conftest.py), and a private state directory for every test.

The pool manager and node servers keep files in `$XDG_STATE_HOME/fargpu` (the enrolment token, node
credentials, the default state file). Tests never touch the real one: the whole session runs with
XDG_STATE_HOME in a temporary folder (for module and session fixtures), and each test gets a folder of its own
(child processes inherit it). FARGPU_ENROL_TOKEN from the caller's environment is dropped for the same reason."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import node_server, server

__all__ = ["node_server", "server"]

_SESSION_STATE: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION_STATE
    _SESSION_STATE = tempfile.mkdtemp(prefix="fargpu-test-state-")
    os.environ["XDG_STATE_HOME"] = _SESSION_STATE
    os.environ.pop("FARGPU_ENROL_TOKEN", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_STATE is not None:
        shutil.rmtree(_SESSION_STATE, ignore_errors=True)


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's XDG_STATE_HOME (the fargpu state directory is its `fargpu` subfolder)."""
    folder = tmp_path_factory.mktemp("xdg-state")
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))
    monkeypatch.delenv("FARGPU_ENROL_TOKEN", raising=False)
    yield folder
