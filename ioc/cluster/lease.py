"""The leader lease and the heartbeats, in SQL on the shared PostgreSQL store.

The lease is one row of `cluster_lease` (`name = 'leader'`): its holder and its expiry, both judged by the
database's clock (`clock_timestamp()`), so the nodes' own clocks never have to agree. A node takes the
lease when nobody holds it or it has expired, and renews it while it holds it, in one statement: an
`INSERT ... ON CONFLICT DO UPDATE ... WHERE` that updates only under those conditions, so two nodes
racing for an expired lease cannot both win (the row lock orders them; the loser's WHERE is then false).
`term` grows at every change of holder.

The roster is `cluster_nodes`, one row per node with its last heartbeat: a node silent for longer than the
lease is shown `down`; after `[cluster] forget_after` (default 24 h) the leader forgets it; a node that
stops gracefully leaves it at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ioc.store import Database

LEASE = "leader"
_NOW = "extract(epoch from clock_timestamp())"  # the database's clock, in Unix seconds (double)

_ACQUIRE = f"""
INSERT INTO cluster_lease (name, holder, expires_at, term) VALUES (?, ?, {_NOW} + ?, 1)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    expires_at = excluded.expires_at,
    term = cluster_lease.term + (CASE WHEN cluster_lease.holder = excluded.holder THEN 0 ELSE 1 END)
WHERE cluster_lease.holder = excluded.holder OR cluster_lease.expires_at < {_NOW}
RETURNING term"""
_RELEASE = "UPDATE cluster_lease SET expires_at = 0 WHERE name = ? AND holder = ?"
_HEARTBEAT = f"""
INSERT INTO cluster_nodes (node, version, started_at, seen_at) VALUES (?, ?, {_NOW}, {_NOW})
ON CONFLICT (node) DO UPDATE SET version = excluded.version, seen_at = excluded.seen_at"""
_MEMBERS = f"""
SELECT n.node, n.seen_at, (CASE WHEN l.holder = n.node AND l.expires_at >= {_NOW} THEN 1 ELSE 0 END),
       (CASE WHEN n.seen_at < {_NOW} - ? THEN 1 ELSE 0 END)
FROM cluster_nodes n LEFT JOIN cluster_lease l ON l.name = ? ORDER BY n.node"""
_FORGET = f"DELETE FROM cluster_nodes WHERE seen_at < {_NOW} - ?"
_LEAVE = "DELETE FROM cluster_nodes WHERE node = ?"


@dataclass(frozen=True, slots=True)
class Member:
    """One node of the roster (`GET /api/v1/cluster`)."""

    node: str
    leader: bool
    heartbeat_at: float  # the database's clock, Unix seconds
    down: bool = False  # no heartbeat for longer than the lease

    @property
    def role(self) -> str:
        """`leader`, `follower`, or `down` (silent for longer than the lease)."""
        return "leader" if self.leader else "down" if self.down else "follower"


def acquire(db: Database, node: str, seconds: float) -> int | None:
    """Take or renew the lease for `seconds` from now (the database's clock): its term, or None when another
    node holds it (StoreError when the store does not answer: the caller cannot tell, and must not lead)."""
    row = db.execute(_ACQUIRE, (LEASE, node, float(seconds))).fetchone()
    return int(row[0]) if row else None


def release(db: Database, node: str) -> None:
    """Give the lease up at once (a graceful stop), if `node` holds it: the next node need not wait it out."""
    db.execute(_RELEASE, (LEASE, node))


def heartbeat(db: Database, node: str, version: str) -> None:
    """`node` is alive now (the database's clock), running `version`."""
    db.execute(_HEARTBEAT, (node, version))


def members(db: Database, lease: float) -> list[Member]:
    """Every node in the roster, with its last heartbeat, whether it holds an unexpired lease, and whether it
    is down (no heartbeat for `lease` seconds: it heartbeats every lease / 3)."""
    return [Member(str(node), bool(leader), float(seen), bool(down))
            for node, seen, leader, down in db.execute(_MEMBERS, (float(lease), LEASE))]


def forget(db: Database, after: float) -> int:
    """Drop the nodes silent for `after` seconds from the roster (they left without a word): how many."""
    return max(0, db.execute(_FORGET, (float(after),)).rowcount or 0)


def leave(db: Database, node: str) -> None:
    """`node` stops for good (a graceful stop): out of the roster at once."""
    db.execute(_LEAVE, (node,))
