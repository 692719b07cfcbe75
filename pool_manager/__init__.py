"""fargpu pool manager: the pool's control plane.

Clients lease GPU capacity over REST (`api.py`); node agents register, heartbeat and receive commands over gRPC
(`grpc_service.py`); the rules live in `service.py` (built in layers, `service_*.py`) and placement in `placement.py`;
state lives behind the `Store` interface (`store.py`) in Redis (`store_redis.py`) or in an embedded,
file-persisted store (`store_embedded.py`).
`server.py` runs it all in one event loop (`PoolManager`, `serve_pool_manager`).

The names below load on first use, so that a node server importing a small helper from here (`units`) does not
pull in the web stack (uvicorn, FastAPI), which a GPU node need not have."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fargpu.pool_manager.config import PoolManagerConfig
    from fargpu.pool_manager.server import PoolManager, serve_pool_manager

__all__ = ["PoolManager", "PoolManagerConfig", "serve_pool_manager"]


def __getattr__(name: str) -> Any:
    if name == "PoolManagerConfig":
        from fargpu.pool_manager.config import PoolManagerConfig

        return PoolManagerConfig
    if name in ("PoolManager", "serve_pool_manager"):
        from fargpu.pool_manager import server

        return getattr(server, name)
    raise AttributeError(f"module 'fargpu.pool_manager' has no attribute {name!r}")
