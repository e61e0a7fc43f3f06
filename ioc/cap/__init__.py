"""CAP 1.2: the alerts of `public: true` rules as OASIS Common Alerting Protocol messages (CONTRACT §9).

`message` builds one CAP document; `publisher.CapPublisher` (a notifier in the alert manager's chain)
turns firing and resolved alerts into Alert / Update / Cancel messages; `store.CapStore` keeps them
(bounded, in the daemon's SQLite store, so the feed survives a restart); `api.cap_router` serves the
Atom feed `GET /api/v1/cap` and each message at `GET /api/v1/cap/{identifier}.xml`. The OASIS schema is
`ioc/data/cap/CAP-v1.2.xsd`.
"""

# `ioc.cap.config` imports `ioc.config`, which imports it back (one configuration model): loading
# `ioc.config` first keeps that cycle in the one order that works, whichever module is imported first.
import ioc.config  # noqa: F401
