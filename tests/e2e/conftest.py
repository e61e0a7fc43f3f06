"""Fixtures for several e2e modules: the two-node world of tests/e2e/cluster_world.py."""

from tests.e2e.cluster_world import nodes, receiver

__all__ = ["nodes", "receiver"]
