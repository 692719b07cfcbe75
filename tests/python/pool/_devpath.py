"""Makes `fargpu.*` importable from a plain checkout, for running the pool tests before `pip install .`.

pyproject maps repo folders into the `fargpu` namespace (`server/` -> `fargpu.server`, `protocol/` ->
`fargpu.protocol`, `pool_manager/` -> `fargpu.pool_manager`). When the package is not installed, this builds
that layout as a tree of symlinks in a temporary folder and puts it first on sys.path. An installed fargpu
always wins: nothing happens when `fargpu.pool_manager` imports."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MAPPING = {"server": "server", "protocol": "protocol", "pool_manager": "pool_manager"}


def ensure_importable() -> None:
    try:
        if importlib.util.find_spec("fargpu.pool_manager") is not None:
            return
    except ModuleNotFoundError:
        pass
    root = Path(tempfile.mkdtemp(prefix="fargpu-devpath-"))
    pkg = root / "fargpu"
    pkg.mkdir()
    for entry in (REPO / "fargpu").iterdir():
        if entry.name not in MAPPING and entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, rel in MAPPING.items():
        (pkg / name).symlink_to(REPO / rel)
    sys.path.insert(0, str(root))
    for mod in [m for m in sys.modules if m == "fargpu" or m.startswith("fargpu.")]:
        del sys.modules[mod]
