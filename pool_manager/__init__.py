"""fargpu pool manager: the pool's control plane.

Clients lease GPU capacity over REST (`api.py`); node agents register, heartbeat and receive commands over gRPC
(`grpc_service.py`); the rules live in `service.py` and placement in `placement.py`; state lives behind the
`Store` interface (`store.py`) in Redis (`store_redis.py`) or in an embedded, file-persisted store
(`store_embedded.py`). `server.py` runs it all in one event loop (`PoolManager`, `serve_pool_manager`)."""

from __future__ import annotations

from fargpu.pool_manager.config import PoolManagerConfig
from fargpu.pool_manager.server import PoolManager, serve_pool_manager

__all__ = ["PoolManager", "PoolManagerConfig", "serve_pool_manager"]
