"""The Kubernetes provider against a real Kubernetes API server (etcd + kube-apiserver v1.20.2 from
scripts/kube_apiserver.sh, through tests/python/kube_api.py), with the project's own manifests (docker/k8s:
namespace, RBAC, node Deployment) applied, and the provider acting as the pool manager's service account (the
admin impersonates it, so the RBAC in docker/k8s/rbac.yaml is what allows or refuses each call).

That server has no controller manager and no kubelet: no ReplicaSet turns replicas into pods, no pod is
scheduled or runs. So the test does by hand what those would do: it creates the node pods with the
Deployment's labels and sets their status (Pending and Unschedulable, Running) through the status subresource,
as the scheduler and kubelet would. A pod deleted there stays terminating (no kubelet confirms it), which is
what a pod being stopped looks like. What runs for real: every call the provider makes (reading the Deployment
and its selector, listing pods, reading and patching the scale subresource, patching a pod's deletion cost),
their RBAC, and the autoscaler driving the provider. What is not exercised: a ReplicaSet honouring the
deletion cost, pods starting on GPU machines, and the cluster autoscaler adding machines."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FakeClock, GiB, gpus
from kube_api import KubeAPI, kube_api  # noqa: F401 - the module-scoped fixture

from fargpu.pool_manager.autoscaler import Autoscaler, AutoscalerConfig
from fargpu.pool_manager.providers import ProviderError, ProviderState
from fargpu.pool_manager.providers.kubernetes import DELETION_COST, LOWEST_COST, KubernetesProvider
from fargpu.pool_manager.service import PoolService
from fargpu.pool_manager.service_core import LeaseRequest

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # self-signed, local

K8S = Path(__file__).resolve().parents[3] / "docker" / "k8s"
NS = "fargpu"
DEPLOYMENT = "fargpu-node"


def manifests(*names: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in names:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def path_of(doc: dict[str, Any]) -> str:
    kind, ns = doc["kind"], doc["metadata"].get("namespace", NS)
    group = doc["apiVersion"]
    base = "/api/v1" if group == "v1" else f"/apis/{group}"
    plural = {"Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "Role": "roles",
              "RoleBinding": "rolebindings", "Deployment": "deployments", "ClusterRole": "clusterroles",
              "ClusterRoleBinding": "clusterrolebindings", "Service": "services"}[kind]  # fmt: skip
    if kind in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
        return f"{base}/{plural}"
    return f"{base}/namespaces/{ns}/{plural}"


@pytest.fixture(scope="module")
def cluster(kube_api: KubeAPI) -> Iterator[KubeAPI]:  # noqa: F811
    """The project's namespace, RBAC and node Deployment, applied once."""
    for doc in manifests("namespace.yaml", "rbac.yaml", "node.yaml"):
        status, body = kube_api.request("POST", path_of(doc), doc)
        assert status in (201, 409), (doc["kind"], status, body)
    yield kube_api


def service_account() -> str:
    for doc in manifests("rbac.yaml"):
        if doc["kind"] == "RoleBinding":
            subject = doc["subjects"][0]
            return f"system:serviceaccount:{subject.get('namespace', NS)}:{subject['name']}"
    raise AssertionError("docker/k8s/rbac.yaml binds no service account")


def provider(api: KubeAPI, user: str | None = None) -> KubernetesProvider:
    from kubernetes import config

    c = config.new_client_from_config(config_file=str(api.kubeconfig))
    c.set_default_header("Impersonate-User", user or service_account())
    return KubernetesProvider(DEPLOYMENT, NS, api_client=c)


def pod(api: KubeAPI, name: str, phase: str, unschedulable: bool = False, machine: str = "") -> None:
    """A node pod as the Deployment's ReplicaSet would make it, with the status a scheduler/kubelet would set."""
    status, dep = api.request("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/{DEPLOYMENT}")
    assert status == 200
    template = dep["spec"]["template"]
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
            "spec": dict(template["spec"], **({"nodeName": machine} if machine else {}))}  # fmt: skip
    status, created = api.request("POST", f"/api/v1/namespaces/{NS}/pods", body)
    assert status == 201, created
    conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                   "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}] if unschedulable else []
    patch = {"status": {"phase": phase, "conditions": conditions}}  # fmt: skip
    status, body = api.request("PATCH", f"/api/v1/namespaces/{NS}/pods/{name}/status", patch,
                               "application/merge-patch+json")  # fmt: skip
    assert status == 200, body


def replicas(api: KubeAPI) -> int:
    status, scale = api.request("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/{DEPLOYMENT}/scale")
    assert status == 200
    return int(scale["spec"].get("replicas", 0))


def set_replicas(api: KubeAPI, n: int) -> None:
    status, body = api.request("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/{DEPLOYMENT}/scale",
                               {"spec": {"replicas": n}}, "application/merge-patch+json")  # fmt: skip
    assert status == 200, body


@pytest.fixture
async def clean(cluster: KubeAPI) -> AsyncIterator[KubeAPI]:
    cluster.request("DELETE", f"/api/v1/namespaces/{NS}/pods?gracePeriodSeconds=0")
    set_replicas(cluster, 0)
    yield cluster
    cluster.request("DELETE", f"/api/v1/namespaces/{NS}/pods?gracePeriodSeconds=0")


async def test_lists_starts_and_stops_node_pods_as_the_pool_managers_service_account(clean: KubeAPI) -> None:
    api = clean
    p = provider(api)
    try:
        assert await p.list() == []
        started = await p.start()
        assert started.state == ProviderState.starting and replicas(api) == 1
        await p.start()
        assert replicas(api) == 2
        pod(api, "fargpu-node-aaaa1", "Running", machine="gpu-1")
        pod(api, "fargpu-node-bbbb2", "Pending", unschedulable=True)
        listed = {n.node_id: n for n in await p.list()}
        assert listed["fargpu-node-aaaa1"].state == ProviderState.running
        assert listed["fargpu-node-bbbb2"].state == ProviderState.starting
        assert "Unschedulable: waiting for a machine with a free GPU" in listed["fargpu-node-bbbb2"].detail
        assert listed["fargpu-node-aaaa1"].started_at > time.time() - 600

        await p.stop("fargpu-node-aaaa1")
        status, stopped = api.request("GET", f"/api/v1/namespaces/{NS}/pods/fargpu-node-aaaa1")
        assert stopped["metadata"]["annotations"][DELETION_COST] == LOWEST_COST  # the ReplicaSet removes it first
        status, other = api.request("GET", f"/api/v1/namespaces/{NS}/pods/fargpu-node-bbbb2")
        assert DELETION_COST not in (other["metadata"].get("annotations") or {})
        assert replicas(api) == 1
        await p.stop("fargpu-node-gone")  # unknown: nothing to do, replicas untouched
        assert replicas(api) == 1

        # The ReplicaSet deletes the pod that costs least; with no kubelet to confirm, a pod on a machine stays
        # terminating, as a stopping node's pod does.
        status, _ = api.request("DELETE", f"/api/v1/namespaces/{NS}/pods/fargpu-node-aaaa1")
        assert status == 200
        listed = {n.node_id: n for n in await p.list()}
        assert listed["fargpu-node-aaaa1"].state == ProviderState.stopping
        assert "on gpu-1 (terminating)" in listed["fargpu-node-aaaa1"].detail
    finally:
        await p.close()


async def test_refused_without_the_rbac(clean: KubeAPI) -> None:
    p = provider(clean, user="system:serviceaccount:fargpu:someone-else")
    try:
        with pytest.raises(ProviderError, match="refused.*RBAC in docker/"):
            await p.list()
        with pytest.raises(ProviderError, match="refused"):
            await p.start()
        assert replicas(clean) == 0
    finally:
        await p.close()


async def test_autoscaler_scales_the_deployment(clean: KubeAPI, service: PoolService, clock: FakeClock) -> None:
    api = clean
    p = provider(api)
    a = Autoscaler(service, p, AutoscalerConfig(max_nodes=2, node_idle_s=30, scale_down_cooldown_s=0), clock=clock)
    try:
        await a.tick()
        assert replicas(api) == 0  # nothing waits: zero nodes
        await service.store.put_demand("m", '[{"vram_bytes": 1073741824, "gpus": 1, "qos": "standard"}]', 60)
        await a.tick()
        assert replicas(api) == 1
        pod(api, "fargpu-node-cccc3", "Pending", unschedulable=True)  # the cluster autoscaler's turn
        await a.tick()
        assert replicas(api) == 1  # a node is starting: the demand waits for it
        status = await a.status()
        assert [(n["node_id"], n["provider_state"]) for n in status.nodes] == [("fargpu-node-cccc3", "starting")]
        # the pod runs and its node server registers under the pod's name
        api.request("PATCH", f"/api/v1/namespaces/{NS}/pods/fargpu-node-cccc3/status",
                    {"status": {"phase": "Running", "conditions": []}}, "application/merge-patch+json")  # fmt: skip
        await service.register_node("fargpu-node-cccc3", ["tcp://10.0.0.7:7100"], "cuda", "", gpus(80))
        lease, _ = await service.create_lease(LeaseRequest(vram_bytes=GiB))
        await service.store.put_demand("m", "", 60)
        await a.tick()
        await service.release_lease(lease.lease_id)
        await a.tick()
        clock.advance(31)
        await a.tick()
        assert replicas(api) == 0  # idle: drained, its pod marked to go first, replicas down
        status_code, gone = api.request("GET", f"/api/v1/namespaces/{NS}/pods/fargpu-node-cccc3")
        assert gone["metadata"]["annotations"][DELETION_COST] == LOWEST_COST
        assert await service.list_nodes() == [] or (await service.list_nodes())[0].state.value == "down"
    finally:
        await p.close()
