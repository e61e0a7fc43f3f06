"""The dossier tracker's durable copy: its rows in the shared store (table `agg_dossiers`, `ioc.store`).

Rows are buffered by dossier and written in one transaction with the tracker's clock (`agg_clock`) on
`flush` (the tracker's `advance` and `persist`) or once `FLUSH_ROWS` are buffered. While the store fails
they stay buffered and are written once it answers (`ioc.store.outage`). Finished dossiers live only
here: a bitmap of their keys' hashes says which keys may be here, so an event of a new dossier costs no
lookup (a round trip to PostgreSQL); during an outage none is looked up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import structlog

from ioc.store import Database, StoreError, StoreTarget, ensure_schema, open_database, upsert
from ioc.store.outage import Outage

log = structlog.get_logger("ioc.aggregators.dossiers")

FLUSH_ROWS = 10_000  # rows buffered before they are written in one transaction
_FINISHED_BITS = 1 << 24  # the bitmap of finished dossiers' key hashes: 2 MiB; ~6% false hits at 1M keys

_COLUMNS = ("source, dossier_id, area, level, channel, status, received_us, due_us, finished_us, last_us, "
            "chain")
_SAVE_ROWS = upsert("agg_dossiers", _COLUMNS.split(", "), ("source", "dossier_id"))
_SAVE_CLOCK = upsert("agg_clock", ("name", "clock_us"), ("name",))


class DossierRow(NamedTuple):
    """A dossier as stored: its latest applied event, times in µs, `chain` as `AreaNodes.chain_text`."""

    source: str
    dossier_id: str
    area: str
    level: str
    channel: str
    status: str
    received_us: int
    due_us: int
    finished_us: int | None
    last_us: int
    chain: str


def dossier_key(source: str, dossier_id: str) -> str:
    """The key a dossier is known by in memory (its primary key in the store)."""
    return f"{source}\x1f{dossier_id}"


class DossierRows:
    """Buffered writes of the rows of `component` (the tracker's name), lookups of finished ones."""

    def __init__(self, store_path: StoreTarget, component: str) -> None:
        self.component = component
        self.db: Database = open_database(store_path)
        ensure_schema(self.db)
        self._outage = Outage(component)
        self._pending: dict[str, DossierRow] = {}
        self._finished_keys = bytearray(_FINISHED_BITS // 8)  # may be a finished dossier in the store
        self._stored_clock = 0

    def find(self, key: str, source: str, dossier_id: str) -> DossierRow | None:
        """The dossier's row, buffered or stored, if it may be finished (open ones are in memory)."""
        row = self._pending.get(key)
        if row is not None:
            return row
        if not self._may_be_finished(key) or self._outage.down:  # no lookup (see the module doc)
            return None
        try:
            found = self.db.execute(f"SELECT {_COLUMNS} FROM agg_dossiers WHERE source = ? AND dossier_id = ?",
                                    (source, dossier_id)).fetchone()
        except StoreError as error:
            self._outage.failed(error, buffered=len(self._pending))
            return None
        return DossierRow(*found) if found else None

    def put(self, key: str, row: DossierRow, clock_us: int) -> None:
        """Buffer the row (written with the clock at the latest when `FLUSH_ROWS` are buffered)."""
        self._pending[key] = row
        if row.finished_us is not None:
            self._mark_finished(key)
        if len(self._pending) >= FLUSH_ROWS:
            self.flush(clock_us)

    def _mark_finished(self, key: str) -> None:
        bit = hash(key) & (_FINISHED_BITS - 1)  # str hashes vary between processes: rebuilt by `load`
        self._finished_keys[bit >> 3] |= 1 << (bit & 7)

    def _may_be_finished(self, key: str) -> bool:
        bit = hash(key) & (_FINISHED_BITS - 1)
        return bool(self._finished_keys[bit >> 3] & (1 << (bit & 7)))

    def flush(self, clock_us: int) -> None:
        """Write the buffered rows and the clock in one transaction, unless the store is resting from a
        failure (`Outage.ready`); what fails stays buffered."""
        if not self._pending and self._stored_clock == clock_us:
            return
        if not self._outage.ready():
            return
        try:
            with self.db.transaction():
                if self._pending:
                    self.db.executemany(_SAVE_ROWS, self._pending.values())
                self.db.execute(_SAVE_CLOCK, (self.component, clock_us))
        except StoreError as error:  # the rows stay buffered and are written again
            self._outage.failed(error, buffered=len(self._pending))
            return
        self._outage.recovered(written=len(self._pending))
        self._pending.clear()
        self._stored_clock = clock_us

    def prune(self, cutoff_us: int, clock_us: int) -> int:
        """Flush, then delete the dossiers finished and received before `cutoff_us`; how many went."""
        self.flush(clock_us)
        try:
            with self.db.transaction():
                return self.db.execute(
                    "DELETE FROM agg_dossiers WHERE finished_us IS NOT NULL AND finished_us < ? "
                    "AND received_us < ?", (cutoff_us, cutoff_us)).rowcount
        except StoreError as error:  # pruned at the next turn of the month; only space is lost
            log.error("aggregator.prune_failed", aggregator=self.component, error=str(error))
            return 0

    def load_clock(self) -> int | None:
        """The clock stored with the last flush, if any."""
        found = self.db.execute("SELECT clock_us FROM agg_clock WHERE name = ?", (self.component,)).fetchone()
        self._stored_clock = found[0] if found else 0
        return found[0] if found else None

    def load(self) -> Iterator[DossierRow]:
        """Every stored dossier (at start: the bitmap of finished ones is rebuilt on the way)."""
        for batch in self.db.batches(f"SELECT {_COLUMNS} FROM agg_dossiers"):
            for values in batch:
                row = DossierRow(*values)
                if row.finished_us is not None:
                    self._mark_finished(dossier_key(row.source, row.dossier_id))
                yield row

    def close(self, clock_us: int) -> None:
        """A last write whatever the outage's pause, then close (what the store does not take is lost,
        and said)."""
        self._outage.retry_now()
        self.flush(clock_us)
        if self._pending:
            log.error("aggregator.rows_lost", aggregator=self.component, rows=len(self._pending))
        self.db.close()
