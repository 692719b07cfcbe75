"""The `fargpu` console script's entry point: `fargpu server ...` runs the node server's command directly, without
importing the pool manager and its web stack (about half a second that a node started from zero would wait for);
everything else goes to the full command tree in fargpu/cli.py. It starts the node server's driver probe first
(server/backend.py), so that CUDA initialises in that child while the node server's modules load."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "server":
        try:
            from fargpu.server import backend
        except ImportError:
            pass
        else:  # the driver probe (a child initialising CUDA) runs while the node server's modules load
            backend.start_probe(backend.requested_backend(sys.argv[2:]))
        try:
            from fargpu.server.cli import app as server_app
        except ImportError:  # the node server is not installed here: fargpu.cli says so
            pass
        else:
            name = Path(sys.argv[0]).name
            name = "fargpu" if name in ("entry.py", "__main__.py") else name  # `python -m fargpu.entry server`
            server_app(args=sys.argv[2:], prog_name=f"{name} server")
            return
    from fargpu.cli import main as full_main

    full_main()


if __name__ == "__main__":
    main()
