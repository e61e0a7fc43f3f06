-- A store made by the release before migrations (commit 44003d4, `ioc/store.py`), dumped with
-- sqlite3's iterdump: tests/integration/test_store_upgrade.py rebuilds the file from it and opens it
-- with this release (the upgrade in place). Made by this script, run on that release's tree:
--
-- # Run against the release before migrations (git archive 44003d4, PYTHONPATH=that tree):
-- # an alert fired and acknowledged, one resolved, a silence, dossier and status tracker rows, rule state.
-- import sqlite3, sys
-- from datetime import datetime, timedelta, timezone
-- from ioc.alerts.manager import AlertManager
-- from ioc.alerts.silence import SilenceRequest
-- from ioc.alerts.updates import AlertUpdate
-- from ioc.aggregators import DossierTracker, StatusTracker, WorkCalendar
-- from ioc.areas import AreaRegistry
-- from ioc.envelope import DossierEvent, StatusEvent
-- from ioc.store import connect, save_state
--
-- path = sys.argv[1]
-- VN = timezone(timedelta(hours=7))
-- MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=VN)
-- T0 = MONDAY.timestamp()
-- now = [T0]
-- manager = AlertManager.open(path, clock=lambda: now[0])
-- def update(state, at, area):
--     return AlertUpdate(rule="aqi-bad", labels={"area": area}, severity="critical", state=state,
--                        summary=f"AQI {area}", value=180.0, at=at)
-- manager.apply(update("firing", T0, "22945"))
-- fired = manager.apply(update("firing", T0, "22918"))
-- manager.apply(update("resolved", T0 + 60, "22918"))
-- active = manager.active()[0]
-- now[0] = T0 + 120
-- manager.ack(active.id, by="truc-ban-1")
-- manager.create_silence(SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}],
--                        "duration": "2h", "comment": "bảo trì"}), actor="truc-ban-2")
-- manager.close()
-- areas = AreaRegistry.default()
-- board = lambda kpi: None
-- dossiers = DossierTracker(areas, WorkCalendar(set(), 1), path, board)
-- for n, status in enumerate(["received", "processing", "done"]):
--     fields = {"id": f"e{n}", "source": "dvc-lamdong", "type": "dossier", "time": MONDAY, "dossier_id": f"d{n}",
--               "procedure": "1.001612", "status": status, "received_at": MONDAY, "due_at": MONDAY + timedelta(days=10),
--               "channel": "online", "level": "commune", "area": "22945"}
--     if status == "done":
--         fields["finished_at"] = MONDAY + timedelta(hours=1)
--     dossiers.observe(DossierEvent.model_validate(fields))
-- dossiers.close()
-- status = StatusTracker(areas, path, board)
-- status.observe(StatusEvent.model_validate({"id": "s1", "source": "viettel-ran", "type": "status", "time": MONDAY,
--                                            "area": "22945", "entity": "cell-1", "state": "down"}))
-- status.close()
-- db = connect(path)
-- save_state(db, "kpis.latest", b"\x00old-state\xff")
-- db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
-- db.close()
BEGIN TRANSACTION;
CREATE TABLE agg_clock (name TEXT PRIMARY KEY, clock_us INTEGER NOT NULL);
INSERT INTO "agg_clock" VALUES('dossiers',1772413200000000);
CREATE TABLE agg_dossiers (
    source TEXT NOT NULL,
    dossier_id TEXT NOT NULL,
    area TEXT NOT NULL,
    level TEXT NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    received_us INTEGER NOT NULL,
    due_us INTEGER NOT NULL,
    finished_us INTEGER,           -- set when finished (done, denied, cancelled)
    last_us INTEGER NOT NULL,      -- the time of the event applied last
    chain TEXT NOT NULL,           -- the area codes it is counted in, own area first
    PRIMARY KEY (source, dossier_id)
) WITHOUT ROWID;
INSERT INTO "agg_dossiers" VALUES('dvc-lamdong','d0','22945','commune','online','received',1772413200000000,1773277200000000,NULL,1772413200000000,'22945,68');
INSERT INTO "agg_dossiers" VALUES('dvc-lamdong','d1','22945','commune','online','processing',1772413200000000,1773277200000000,NULL,1772413200000000,'22945,68');
INSERT INTO "agg_dossiers" VALUES('dvc-lamdong','d2','22945','commune','online','done',1772413200000000,1773277200000000,1772416800000000,1772413200000000,'22945,68');
CREATE TABLE agg_entities (
    source TEXT NOT NULL,
    entity TEXT NOT NULL,
    area TEXT NOT NULL,
    state TEXT NOT NULL,
    last_us INTEGER NOT NULL,     -- the time of the event applied last
    chain TEXT NOT NULL,          -- the area codes it is counted in, own area first
    PRIMARY KEY (source, entity)
) WITHOUT ROWID;
INSERT INTO "agg_entities" VALUES('viettel-ran','cell-1','22945','down',1772413200000000,'22945,68');
CREATE TABLE alert_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
INSERT INTO "alert_audit" VALUES(1,1772413320.0,'truc-ban-1','alert.ack','b018c5582a2d4b1785d519a114214b11','{"rule":"aqi-bad","fingerprint":"cba8c4e6b286bbff","labels":{"area":"22945"}}');
INSERT INTO "alert_audit" VALUES(2,1772413320.0,'truc-ban-2','silence.create','f36280fe-1ced-46ce-b2a6-baa6d5ef7e6c','{"matchers":["area=\"22723\""],"starts_at":"2026-03-02T01:02:00+00:00","ends_at":"2026-03-02T03:02:00+00:00","comment":"bảo trì","author":"truc-ban-2"}');
CREATE TABLE alert_outbox (
    seq INTEGER PRIMARY KEY,
    notifier TEXT NOT NULL,
    id TEXT NOT NULL,
    change TEXT NOT NULL,
    alert BLOB NOT NULL
);
CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    labels TEXT NOT NULL,
    summary TEXT NOT NULL,
    value REAL,
    runbook TEXT,
    started_at REAL NOT NULL,
    fired_at REAL,
    resolved_at REAL,
    acknowledged_by TEXT,
    acknowledged_at REAL,
    updated_at REAL NOT NULL
);
INSERT INTO "alerts" VALUES('6b588cb6a2c94c9097334cc944fc1948','742b6d2e0531e5b4','aqi-bad','critical','resolved','{"area":"22918"}','AQI 22918',180.0,NULL,1772413200.0,1772413200.0,1772413260.0,NULL,NULL,1772413200.0);
INSERT INTO "alerts" VALUES('b018c5582a2d4b1785d519a114214b11','cba8c4e6b286bbff','aqi-bad','critical','firing','{"area":"22945"}','AQI 22945',180.0,NULL,1772413200.0,1772413200.0,NULL,'truc-ban-1',1772413320.0,1772413320.0);
CREATE TABLE component_state (name TEXT PRIMARY KEY, data BLOB NOT NULL);
INSERT INTO "component_state" VALUES('kpis.latest',X'006F6C642D7374617465FF');
CREATE TABLE silences (
    id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_at REAL NOT NULL,
    ends_at REAL NOT NULL,
    comment TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO "silences" VALUES('f36280fe-1ced-46ce-b2a6-baa6d5ef7e6c','[{"name":"area","value":"22723","op":"="}]',1772413320.0,1772420520.0,'bảo trì','truc-ban-2',1772413320.0,1772413320.0);
CREATE INDEX alerts_state ON alerts (state, resolved_at);
CREATE INDEX alerts_fingerprint ON alerts (fingerprint);
CREATE INDEX alert_audit_at ON alert_audit (at);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('alert_audit',2);
COMMIT;
