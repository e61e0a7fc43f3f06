"""The cluster of daemons sharing one PostgreSQL store (CONTRACT §8): the leader lease, the nodes'
heartbeats and roster. With SQLite there is no cluster: the one node is the leader."""

from __future__ import annotations

from ioc.cluster.lease import Member, acquire, heartbeat, members, release
from ioc.cluster.node import ClusterNode

__all__ = ["ClusterNode", "Member", "acquire", "heartbeat", "members", "release"]
