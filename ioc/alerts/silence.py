"""Silences, as in Alertmanager: label matchers and a time span during which matching alerts are muted.

A silence never stops an alert from being recorded (docs/rules.md): a silenced alert is stored, listed
(`silenced: true`), sent on the SSE stream and kept in its retained MQTT state; only webhooks and
`ioc/v1/alerts/{rule}` skip it. Its `status` follows the wall clock: `pending` before `starts_at`,
`active` until `ends_at`, then `expired`. Deleting a silence expires it (`ends_at` = now), so it stays
listed with the others for `[alerts] silence_retention` (5 days) and is then purged.

One set of silences serves both APIs (`/api/v1/silences` and Alertmanager's `/api/v2/silences`), with
the same ids (UUIDs, as Alertmanager's). Updating a silence follows Alertmanager (`silence.Set`): it is
changed in place when its matchers are the same and its times may still change (an active silence keeps
its start and ends in the future; a pending one starts in the future); otherwise the old one is expired
and a new one, with a new id, takes its place.

The silences own their storage: the `silences` table of the shared store (`SilenceStore`, on its own
connection; SQLite or PostgreSQL), written with the audit entry of the change in one transaction.
`Silences` is the silencing `Muter` of the notification pipeline (`ioc.alerts.muting`).
"""

from __future__ import annotations

import builtins
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

import orjson

from ioc.alerts import audit as audit_log
from ioc.alerts.alert import Alert, rfc3339
from ioc.alerts.audit import AuditEntry
from ioc.alerts.errors import InvalidSilence, SilenceNotFound
from ioc.alerts.silence_request import MAX_AHEAD, MAX_AHEAD_DAYS, SilenceRequest
from ioc.alerts.store import ADD_OUTBOX, OutboxRow
from ioc.matchers import Matcher, matches_all
from ioc.store import StoreTarget, ensure_schema, open_database, upsert

__all__ = ["STATUSES", "Silence", "SilenceRequest", "SilenceStatus", "SilenceStore", "Silences"]

SilenceStatus: TypeAlias = Literal["pending", "active", "expired"]
STATUSES: tuple[SilenceStatus, ...] = ("pending", "active", "expired")
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence; times are wall-clock Unix seconds."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    comment: str
    author: str
    created_at: float
    updated_at: float

    def status(self, now: float) -> SilenceStatus:
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def matches(self, labels: Mapping[str, str]) -> bool:
        return matches_all(self.matchers, labels)

    def as_json(self, now: float) -> dict[str, Any]:
        """The API shape: the POST body's fields plus `id`, `status`, `created_at`, `updated_at`."""
        return {
            "id": self.id,
            "matchers": [matcher.as_json() for matcher in self.matchers],
            "starts_at": rfc3339(self.starts_at),
            "ends_at": rfc3339(self.ends_at),
            "comment": self.comment,
            "author": self.author,
            "status": self.status(now),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


_COLUMNS = "id, matchers, starts_at, ends_at, comment, author, created_at, updated_at"
_SAVE = upsert("silences", _COLUMNS.split(", "), ("id",))


class SilenceStore:
    """The `silences` table (and the audit entries of its changes) in the shared store, on its own
    connection (`target`: a Database to open another connection to, a store URL or a SQLite path).
    `node` is recorded with the audit entries. Thread-safe: one lock around the connection."""

    def __init__(self, target: StoreTarget, *, node: str = "") -> None:
        self._db = open_database(target or ":memory:", node=node)
        self._node = node
        self._lock = threading.Lock()
        ensure_schema(self._db)

    def save(self, silences: Sequence[Silence], audits: Sequence[AuditEntry] = (),
             outbox: Sequence[OutboxRow] = ()) -> None:
        """Insert or replace silences, with the audit entries of the change and the notifications it owes
        (`Silences.owed`), in one transaction."""
        rows = [(silence.id, orjson.dumps([matcher.as_json() for matcher in silence.matchers]).decode(),
                 silence.starts_at, silence.ends_at, silence.comment, silence.author, silence.created_at,
                 silence.updated_at) for silence in silences]
        with self._lock, self._db.transaction():
            self._db.executemany(_SAVE, rows)
            for entry in audits:
                audit_log.insert(self._db, entry, self._node)
            if outbox:
                self._db.executemany(ADD_OUTBOX, outbox)

    def load(self) -> list[Silence]:
        """Every stored silence, the oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM silences ORDER BY created_at").fetchall()
        found = []
        for sid, matchers, starts_at, ends_at, comment, author, created_at, updated_at in rows:
            parsed = tuple(Matcher.create(item["name"], item["value"], item["op"])
                           for item in orjson.loads(matchers))
            found.append(Silence(sid, parsed, starts_at, ends_at, comment, author, created_at, updated_at))
        return found

    def delete(self, ids: builtins.list[str]) -> None:
        with self._lock, self._db.transaction():
            self._db.executemany("DELETE FROM silences WHERE id = ?", [(sid,) for sid in ids])

    def audit_log(self, *, target: str | None = None, limit: int = 1000) -> builtins.list[AuditEntry]:
        with self._lock:
            return audit_log.read(self._db, target=target, limit=limit)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def new_silence_id() -> str:
    """A new silence's id: a UUID in its text form, as Alertmanager's (amtool takes any string)."""
    return str(uuid.uuid4())


class Silences:
    """The silences, in memory and in their store; the silencing `Muter`. Not thread-safe on its own:
    the `AlertManager` calls it under its lock."""

    def __init__(self, store: SilenceStore | None, *, clock: Clock = time.time,
                 retention: float = 5 * 86400.0) -> None:
        self._store = store
        self._clock = clock
        self.retention = retention
        self._silences: dict[str, Silence] = {}
        # The outbox rows a change of the silences owes, worked out with it in place (a follower's muting
        # changes: `AlertManager`), written in its transaction.
        self.owed: Callable[[], Sequence[OutboxRow]] | None = None
        if store is not None:
            self._silences = {silence.id: silence for silence in store.load()}

    def create(self, request: SilenceRequest, *, actor: str, silence_id: str | None = None) -> Silence:
        """A new silence from a validated request; InvalidSilence when its times or matchers make no
        sense (an end before the start, in the past or more than MAX_AHEAD ahead, matchers that would
        mute every alert). With `silence_id` (Alertmanager's POST of an existing silence), the silence
        with that id is updated as Alertmanager does (see the module doc); SilenceNotFound."""
        now = self._clock()
        matchers, starts_at, ends_at = _checked(request, now)
        author = request.author or actor
        previous = self.get(silence_id) if silence_id is not None else None
        if previous is not None and _can_update(previous, matchers, starts_at, ends_at, now):
            updated = replace(previous, matchers=matchers, starts_at=starts_at, ends_at=ends_at,
                              comment=request.comment, author=author, updated_at=now)
            self._save([updated], [AuditEntry(now, actor, "silence.update", updated.id, _detail(updated))])
            return updated
        silence = Silence(id=new_silence_id(), matchers=matchers, starts_at=starts_at, ends_at=ends_at,
                          comment=request.comment, author=author, created_at=now, updated_at=now)
        changed = [silence]
        audits = [AuditEntry(now, actor, "silence.create", silence.id, _detail(silence))]
        if previous is not None and previous.status(now) != "expired":  # replaced: it ends now
            expired = _expired(previous, now)
            changed.insert(0, expired)
            audits.insert(0, AuditEntry(now, actor, "silence.expire", previous.id,
                                        {**_detail(expired), "replaced_by": silence.id}))
        self._save(changed, audits)
        return silence

    def expire(self, silence_id: str, *, actor: str) -> tuple[Silence, bool]:
        """Expire a silence now (what DELETE does); (the silence, whether it changed). An expired one is
        left as it is; a pending one ends before it began (`starts_at` = `ends_at` = now)."""
        silence = self.get(silence_id)
        now = self._clock()
        if silence.status(now) == "expired":
            return silence, False
        expired = _expired(silence, now)
        self._save([expired], [AuditEntry(now, actor, "silence.expire", silence_id, _detail(expired))])
        return expired, True

    def _save(self, silences: builtins.list[Silence], audits: builtins.list[AuditEntry]) -> None:
        """Store the changed silences with the audit entries (and the rows they owe), in one transaction;
        then keep them (StoreError: kept as they were)."""
        before = dict(self._silences)
        for silence in silences:
            self._silences[silence.id] = silence
        if self._store is not None:
            try:
                self._store.save(silences, audits, self.owed() if self.owed is not None else ())
            except BaseException:
                self._silences = before
                raise

    def reload(self, silences: Iterable[Silence]) -> None:
        """The store's silences replace these (another node made or ended one: CONTRACT §8)."""
        self._silences = {silence.id: silence for silence in silences}

    def get(self, silence_id: str) -> Silence:
        silence = self._silences.get(silence_id)
        if silence is None:
            raise SilenceNotFound(f"no silence with id {silence_id!r}")
        return silence

    def list(self, status: SilenceStatus | None = None) -> list[Silence]:
        """Every silence still listed (of one status), active first, then pending, then expired; the
        newest first within each."""
        now = self._clock()
        order = {"active": 0, "pending": 1, "expired": 2}
        found = [s for s in self._silences.values() if status is None or s.status(now) == status]
        return sorted(found, key=lambda s: (order[s.status(now)], -s.created_at))

    def matching(self, labels: Mapping[str, str], now: float | None = None) -> tuple[str, ...]:
        """The ids of the active silences that match the label set."""
        now = self._clock() if now is None else now
        return tuple(sorted(silence.id for silence in self._silences.values()
                            if silence.starts_at <= now < silence.ends_at and silence.matches(labels)))

    def muted_by(self, alert: Alert, now: float | None = None) -> tuple[str, ...]:
        """`Muter`: the ids of the active silences that match the alert's labels (`match_labels`)."""
        return self.matching(alert.match_labels(), now)

    def mutes(self, alert: Alert, now: float | None = None) -> bool:
        return bool(self.muted_by(alert, now))

    def next_transition(self, now: float) -> float | None:
        """The next time a silence starts or ends after `now` (when muting must be looked at again)."""
        times = [t for silence in self._silences.values() for t in (silence.starts_at, silence.ends_at)
                 if t > now]
        return min(times, default=None)

    def purge(self) -> builtins.list[str]:
        """Forget silences expired for longer than the retention; their ids."""
        limit = self._clock() - self.retention
        gone = [sid for sid, silence in self._silences.items() if silence.ends_at < limit]
        for sid in gone:
            del self._silences[sid]
        if gone and self._store is not None:
            self._store.delete(gone)
        return gone

    def counts(self) -> dict[SilenceStatus, int]:
        """How many silences are in each status now (every status present)."""
        now = self._clock()
        found: dict[SilenceStatus, int] = dict.fromkeys(STATUSES, 0)
        for silence in self._silences.values():
            found[silence.status(now)] += 1
        return found


def _detail(silence: Silence) -> dict[str, Any]:
    return {"matchers": [str(matcher) for matcher in silence.matchers],
            "starts_at": rfc3339(silence.starts_at), "ends_at": rfc3339(silence.ends_at),
            "comment": silence.comment, "author": silence.author}


def _checked(request: SilenceRequest, now: float) -> tuple[tuple[Matcher, ...], float, float]:
    """The request's matchers, start and end, or InvalidSilence naming the field."""
    starts_at = request.starts_at.timestamp() if request.starts_at is not None else now
    if request.ends_at is not None and request.duration is not None:
        raise InvalidSilence("ends_at: give ends_at or duration, not both")
    if request.ends_at is not None:
        ends_at = request.ends_at.timestamp()
    elif request.duration is not None:
        ends_at = starts_at + request.duration  # not after 9999 when it ends in the past or too soon
    else:
        raise InvalidSilence("ends_at: required (or a duration such as '2h')")
    if ends_at <= now:
        raise InvalidSilence(f"ends_at: {rfc3339(ends_at)} is in the past")
    if ends_at <= starts_at:
        raise InvalidSilence(f"ends_at: {rfc3339(ends_at)} is not after starts_at {rfc3339(starts_at)}")
    too_far = f"more than {MAX_AHEAD_DAYS} days from now"
    if starts_at > now + MAX_AHEAD:
        raise InvalidSilence(f"starts_at: {too_far}")
    if ends_at > now + MAX_AHEAD:
        field = "ends_at" if request.ends_at is not None else "duration"
        raise InvalidSilence(f"{field}: the silence would end {too_far}")
    matchers = tuple(spec.build() for spec in request.matchers)
    if all(matcher.matches({}) for matcher in matchers):
        raise InvalidSilence("matchers: at least one matcher must not match an empty label, "
                             "or the silence would mute every alert")
    return matchers, starts_at, ends_at


def _can_update(previous: Silence, matchers: tuple[Matcher, ...], starts_at: float, ends_at: float,
                now: float) -> bool:
    """Alertmanager's `canUpdate`: the same matchers, and times the silence's status still allows."""
    if previous.matchers != matchers:
        return False
    status = previous.status(now)
    if status == "active":  # the same start: as the API showed it, in milliseconds
        return abs(starts_at - previous.starts_at) < 0.001 and ends_at >= now
    if status == "pending":
        return starts_at >= now
    return False


def _expired(silence: Silence, now: float) -> Silence:
    """The silence ended now (a pending one ends before it began: `starts_at` = `ends_at` = now)."""
    return replace(silence, starts_at=min(silence.starts_at, now), ends_at=now, updated_at=now)
