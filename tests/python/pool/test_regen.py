"""The committed protobuf modules match `protocol/pool.proto`: regenerate into a temporary folder and compare
(ignoring only the lines that name the generator's version). Fix a failure with
`python -m fargpu.pool_manager.regen_proto` (or `python pool_manager/regen_proto.py`) from the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from fargpu.pool_manager import regen_proto

REPO = Path(__file__).resolve().parents[3]


def test_generated_protocol_modules_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates the modules")
    proto = REPO / "protocol" / "pool.proto"
    committed = REPO / "protocol" / "generated"
    fresh = regen_proto.generate(tmp_path, proto)
    for path in fresh:
        old = committed / path.name
        assert old.exists(), f"{old} is missing: run python -m fargpu.pool_manager.regen_proto"
        assert regen_proto.normalized(old.read_text()) == regen_proto.normalized(path.read_text()), (
            f"{old} is stale: run python -m fargpu.pool_manager.regen_proto"
        )


def test_generated_grpc_module_imports_package_relative() -> None:
    text = (REPO / "protocol" / "generated" / "pool_pb2_grpc.py").read_text()
    assert "from . import pool_pb2 as pool__pb2" in text and "\nimport pool_pb2" not in text
    from fargpu.protocol.generated import pool_pb2_grpc

    assert hasattr(pool_pb2_grpc, "NodeRegistryStub")


def test_normalized_ignores_only_version_lines() -> None:
    a = "x = 1\n# Protobuf Python Version: 7.35.1\n_runtime_version.ValidateProtobufRuntimeVersion(\n  A,\n  7,\n)\ny"
    b = "x = 1\n# Protobuf Python Version: 8.0.0\n_runtime_version.ValidateProtobufRuntimeVersion(\n  A,\n  8,\n)\ny"
    assert regen_proto.normalized(a) == regen_proto.normalized(b)
    assert regen_proto.normalized(a) != regen_proto.normalized(a.replace("x = 1", "x = 2"))
