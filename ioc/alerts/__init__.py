"""Alerts: what the rule engine's state changes become for operators (docs/http-api.md, docs/rules.md).

`ioc.config` is imported first on purpose: it imports `ioc.alerts.config` (for `Settings.alerts`), which
imports `ioc.config` back; loading `ioc.config` first keeps that cycle in the one order that works, even
when a caller imports `ioc.alerts.config` (or any module of this package) before anything else.
"""

import ioc.config  # noqa: F401  (see above)
