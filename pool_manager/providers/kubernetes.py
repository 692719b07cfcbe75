"""The Kubernetes provider: scales the Deployment that runs the pool's node agents, through the official
`kubernetes` Python client. It never adds machines: a node pod asks for `nvidia.com/gpu`, and when no machine
has one free the pod stays Pending (Unschedulable) until the cluster autoscaler or Karpenter adds one.

- list: the Deployment's pods (its own label selector). A pod's name is its node id: the manifest sets
  FARGPU_NODE_ID from `metadata.name` (downward API), so the pool's node records and the pods join by name.
  Pending -> starting (with the scheduler's reason), Running -> running, deleting -> stopping. Pods that
  finished (Succeeded, Failed) are left out: their ReplicaSet replaces them.
- start: replicas + 1 on the Deployment's scale subresource. The pod's name is not known until the ReplicaSet
  makes it, so the node returned has an empty id.
- stop(node): picks that pod explicitly. It sets the pod's `controller.kubernetes.io/pod-deletion-cost` to the
  lowest value (the ReplicaSet removes the pods with the lowest cost first on a scale-down), then replicas - 1.
  The pool drained the node before, so nothing runs on it.

RBAC (docker/ has the manifests): get/patch on deployments/scale and get on deployments in the namespace, and
get/list/patch on pods. Calls run in a worker thread (the client is synchronous), each with a timeout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fargpu.pool_manager.providers.base import ProviderError, ProviderNode, ProviderState

log = logging.getLogger("fargpu.pool_manager.providers.kubernetes")

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
LOWEST_COST = str(-(2**31))  # the annotation is an int32
T = TypeVar("T")


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """In a pod: the service account's credentials; else the kubeconfig (`kubeconfig`, $KUBECONFIG, ~/.kube)."""
    from kubernetes import client, config

    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as e:
        raise ProviderError(f"cannot reach Kubernetes: no in-cluster credentials and no usable kubeconfig ({e}); "
                            "run the pool manager in the cluster, or pass --kube-config") from e  # fmt: skip


class KubernetesProvider:
    name = "kubernetes"

    def __init__(
        self,
        deployment: str,
        namespace: str = "default",
        *,
        api_client: Any = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        from kubernetes import client

        self.deployment = deployment
        self.namespace = namespace
        self._api = api_client if api_client is not None else load_api_client(kubeconfig, context)
        self._apps = client.AppsV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._timeout = timeout_s

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        from kubernetes.client.exceptions import ApiException

        try:
            return await asyncio.to_thread(fn, *args, _request_timeout=self._timeout, **kw)
        except ApiException as e:
            if e.status in (401, 403):
                raise ProviderError(f"Kubernetes refused to {what} ({e.status} {e.reason}): give the pool manager's "
                                    "service account the RBAC in docker/ (deployments/scale, pods)") from e  # fmt: skip
            raise ProviderError(f"Kubernetes could not {what}: {e.status} {e.reason}") from e
        except OSError as e:
            raise ProviderError(f"cannot reach the Kubernetes API to {what}: {e}") from e

    async def _selector(self) -> str:
        dep = await self._call(f"read deployment {self.namespace}/{self.deployment}",
                               self._apps.read_namespaced_deployment, self.deployment, self.namespace)  # fmt: skip
        labels = dep.spec.selector.match_labels or {}
        if not labels:
            raise ProviderError(f"deployment {self.namespace}/{self.deployment} selects its pods without matchLabels; "
                                "give it a matchLabels selector")  # fmt: skip
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    @staticmethod
    def _node(pod: Any) -> ProviderNode | None:
        meta, status = pod.metadata, pod.status
        phase = (status.phase if status is not None else None) or "Pending"
        started = meta.creation_timestamp.timestamp() if meta.creation_timestamp is not None else 0.0
        host = pod.spec.node_name if pod.spec is not None else None
        where = f"pod {meta.name}" + (f" on {host}" if host else "")
        if meta.deletion_timestamp is not None:
            return ProviderNode(meta.name, ProviderState.stopping, started, where + " (terminating)")
        if phase == "Running":
            return ProviderNode(meta.name, ProviderState.running, started, where)
        if phase == "Pending":
            why = ""
            for c in (status.conditions or []) if status is not None else []:
                if c.type == "PodScheduled" and c.status == "False":
                    why = f" ({c.reason}: waiting for a machine with a free GPU)" if c.reason else ""
            return ProviderNode(meta.name, ProviderState.starting, started, where + " Pending" + why)
        return None

    async def _scale(self) -> int:
        scale = await self._call(
            f"read the scale of deployment {self.namespace}/{self.deployment}",
            self._apps.read_namespaced_deployment_scale,
            self.deployment,
            self.namespace,
        )
        return int(scale.spec.replicas or 0) if scale.spec is not None else 0

    async def _set_replicas(self, n: int) -> None:
        await self._call(f"scale deployment {self.namespace}/{self.deployment} to {n}",
                         self._apps.patch_namespaced_deployment_scale, self.deployment, self.namespace,
                         {"spec": {"replicas": n}})  # fmt: skip

    async def list(self) -> list[ProviderNode]:
        pods = await self._call(f"list the pods of deployment {self.namespace}/{self.deployment}",
                                self._core.list_namespaced_pod, self.namespace,
                                label_selector=await self._selector())  # fmt: skip
        nodes = [n for p in pods.items if (n := self._node(p)) is not None]
        return sorted(nodes, key=lambda n: n.node_id)

    async def start(self) -> ProviderNode:
        n = await self._scale() + 1
        await self._set_replicas(n)
        log.info("scaled deployment %s/%s to %d node pod(s)", self.namespace, self.deployment, n)
        return ProviderNode("", ProviderState.starting, 0.0, f"deployment {self.deployment} replicas {n}")

    async def stop(self, node_id: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            await asyncio.to_thread(self._core.patch_namespaced_pod, node_id, self.namespace,
                                    {"metadata": {"annotations": {DELETION_COST: LOWEST_COST}}},
                                    _request_timeout=self._timeout)  # fmt: skip
        except ApiException as e:
            if e.status == 404:
                return  # gone already
            raise ProviderError(f"Kubernetes could not mark pod {node_id} to go first: {e.status} {e.reason}") from e
        n = max(0, await self._scale() - 1)
        await self._set_replicas(n)
        log.info("scaled deployment %s/%s to %d node pod(s), pod %s first", self.namespace, self.deployment, n,
                 node_id)  # fmt: skip

    async def close(self) -> None:
        close = getattr(self._api, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
