"""A swarm of gRPC node clients for test_grpc_under_load.py, run as its own process (as nodes are other
machines): enrols (with FARGPU_ENROL_TOKEN) and registers N nodes, keeps each one's Commands stream open,
heartbeats each once a second for a while, and prints every heartbeat's latency (seconds; null for a failed
call) as JSON."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import grpc

from fargpu.pool_manager.enrolment import node_metadata
from fargpu.protocol.generated import pool_pb2, pool_pb2_grpc


async def swarm(target: str, seconds: float, nodes: int, enrol_token: str) -> list[float | None]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pool_pb2_grpc.NodeRegistryStub(channel)
        md: list[tuple[tuple[str, str], ...]] = []
        for i in range(nodes):
            enrolled = await stub.Enrol(pool_pb2.EnrolRequest(node_id=f"n{i}", enrol_token=enrol_token))
            md.append(node_metadata(f"n{i}", enrolled.credential))
            gpu = pool_pb2.Gpu(index=0, total_bytes=1 << 34)
            await stub.Register(
                pool_pb2.RegisterRequest(node_id=f"n{i}", endpoints=["tcp://n:1"], gpus=[gpu]), metadata=md[i]
            )

        async def stream(i: int) -> None:
            try:
                async for _ in stub.Commands(pool_pb2.CommandsRequest(node_id=f"n{i}"), metadata=md[i]):
                    pass
            except grpc.aio.AioRpcError:
                pass

        streams = [asyncio.create_task(stream(i)) for i in range(nodes)]
        latencies: list[float | None] = []
        deadline = time.monotonic() + seconds

        async def beat(i: int) -> None:
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    await stub.Heartbeat(pool_pb2.HeartbeatRequest(node_id=f"n{i}"), timeout=2.0, metadata=md[i])
                    latencies.append(time.monotonic() - t0)
                except grpc.aio.AioRpcError:
                    latencies.append(None)
                await asyncio.sleep(1.0)

        await asyncio.gather(*(beat(i) for i in range(nodes)))
        for s in streams:
            s.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        return latencies


if __name__ == "__main__":
    token = os.environ["FARGPU_ENROL_TOKEN"]
    print(json.dumps(asyncio.run(swarm(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), token))))
