"""Fixtures for the end-to-end tests (helpers live in e2e_helpers.py, so test modules can import them
without colliding with tests/python/pool/conftest.py)."""

from e2e_helpers import node_server, server

__all__ = ["node_server", "server"]
