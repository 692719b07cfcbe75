"""Node providers: the pool's way to start and stop GPU nodes (see base.py). `local` runs node server
processes on this machine (the embedded default, and what the tests use); `kubernetes` scales the Deployment of
node agents through the Kubernetes API. `make_provider` builds one from the pool manager's flags."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fargpu.pool_manager.providers.base import NodeProvider, ProviderError, ProviderNode, ProviderState

if TYPE_CHECKING:
    from fargpu.pool_manager.config import PoolManagerConfig

__all__ = ["NodeProvider", "ProviderError", "ProviderNode", "ProviderState", "PROVIDERS", "make_provider"]

PROVIDERS = ("none", "local", "kubernetes")


def make_provider(config: PoolManagerConfig, pool_url: Callable[[], str], enrol_token: str,
                  grpc_target: Callable[[], str] | None = None) -> NodeProvider | None:  # fmt: skip
    """The provider the config names (None for "none"). Raises ProviderError when it cannot be set up.
    `grpc_target`: where the local provider's nodes reach the pool's gRPC port."""
    if config.provider == "none":
        return None
    if config.provider == "local":
        from fargpu.pool_manager.providers.local import LocalProvider

        return LocalProvider(pool_url, enrol_token=enrol_token, backend=config.local_backend,
                             extra_args=config.local_node_args, log_dir=config.local_log_dir,
                             grpc_target=grpc_target)  # fmt: skip
    if config.provider == "kubernetes":
        try:
            from fargpu.pool_manager.providers.kubernetes import KubernetesProvider
        except ImportError as e:
            raise ProviderError(f"the kubernetes provider needs the kubernetes package ({e.name} is missing): "
                                "pip install 'fargpu[kubernetes]'") from e  # fmt: skip
        return KubernetesProvider(config.kube_deployment, config.kube_namespace, kubeconfig=config.kube_config)
    raise ProviderError(f"unknown node provider {config.provider!r}: expected one of {', '.join(PROVIDERS)}")
