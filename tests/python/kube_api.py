"""A real Kubernetes API server (etcd + kube-apiserver v1.20.2) for tests, through scripts/kube_apiserver.sh.

    from kube_api import KubeAPI, kube_api   # kube_api: a module-scoped pytest fixture (import it into the test file)

    def test_x(kube_api: KubeAPI) -> None:
        kube_api.kubeconfig   # path of a kubeconfig for user `admin` (system:masters)
        kube_api.url, kube_api.token
        kube_api.request("GET", "/api/v1/namespaces")   # -> (status, parsed JSON)

The first use on a machine builds kube-apiserver (about 5 minutes on 2 cores) into the cache the script names; later
ones start in about 5 s. There is no kubelet or controller manager: objects are stored and validated, RBAC is
enforced, no pod ever runs and no Deployment gets a ReplicaSet."""

from __future__ import annotations

import json
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kube_apiserver.sh"


@dataclass
class KubeAPI:
    kubeconfig: Path
    url: str
    token: str
    state_dir: Path

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One API call as the admin user; returns the status and the decoded JSON body (also for errors)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed, made at start
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type,
                                              "Accept": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")


def start(state_dir: Path) -> KubeAPI:
    """Starts etcd + kube-apiserver with their state in `state_dir`; stop them with stop(api)."""
    r = subprocess.run(["bash", str(SCRIPT), "start", str(state_dir)], capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        raise RuntimeError(f"scripts/kube_apiserver.sh start failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    env = dict(line.split("=", 1) for line in (state_dir / "env").read_text().splitlines() if "=" in line)
    return KubeAPI(Path(env["KUBECONFIG"]), env["KUBE_API_URL"], env["KUBE_API_TOKEN"], state_dir)


def stop(api: KubeAPI) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", str(api.state_dir)], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def kube_api() -> Iterator[KubeAPI]:
    with tempfile.TemporaryDirectory(prefix="fargpu-kube-") as d:
        api = start(Path(d))
        try:
            yield api
        finally:
            stop(api)
