"""Container health checks for the fargpu images (Docker HEALTHCHECK; Kubernetes uses its own probes).

    healthcheck.py pool-manager   GET /healthz on FARGPU_POOL_PORT (default 7000) answers 200
    healthcheck.py node           the node's data port (FARGPU_LISTEN) accepts a connection and, unless metrics are
                                  off, its /metrics (FARGPU_METRICS_PORT) answers 200

Exit 0 when healthy, 1 with one line saying what failed. Standard library only, so it runs on the image's python."""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def _get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=3) as r:
        if r.status != 200:
            raise OSError(f"{url} answered {r.status}")


def pool_manager() -> None:
    _get(f"http://127.0.0.1:{int(os.environ.get('FARGPU_POOL_PORT', '7000'))}/healthz")


def node() -> None:
    listen = os.environ.get("FARGPU_LISTEN", "127.0.0.1:7100")
    if listen:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        with socket.create_connection(("127.0.0.1" if host in ("", "0.0.0.0", "::") else host, int(port)), 3):
            pass
    metrics = int(os.environ.get("FARGPU_METRICS_PORT", "9400"))
    if metrics > 0:
        _get(f"http://127.0.0.1:{metrics}/metrics")


def main() -> int:
    checks = {"pool-manager": pool_manager, "node": node}
    if len(sys.argv) != 2 or sys.argv[1] not in checks:
        print(f"usage: healthcheck.py {' | '.join(checks)}", file=sys.stderr)
        return 2
    try:
        checks[sys.argv[1]]()
    except (OSError, ValueError) as e:
        print(f"unhealthy: {sys.argv[1]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
