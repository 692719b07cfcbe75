"""The state directory's paths, shared by the pool manager and node servers on one machine: the directory itself
(`$XDG_STATE_HOME/fargpu`, else `~/.local/state/fargpu`, read at each call: tests point it elsewhere), the
enrolment token file a pool manager creates and a node reads, and the folder a node keeps its credentials in.
Standard library only: a node server imports these without the pool manager's modules (config.py re-exports
them, with the rest of the pool manager's configuration)."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """`$XDG_STATE_HOME/fargpu`, else `~/.local/state/fargpu`."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fargpu"


def enrol_token_file() -> Path:
    """The pool's enrolment token when none is configured: created once by a pool manager, read by nodes."""
    return state_dir() / "enrol-token"


def node_credentials_dir() -> Path:
    """Where a node server keeps the credential the pool issued it, one file per node id."""
    return state_dir() / "node-credentials"
