"""The operations-center wall display (docs/http-api.md `GET /`): its static page (`index.html`, `app.js`,
`i18n.js`, `style.css`, served by `ioc.api.web`) and `SourceWatch`, the evaluation stage that tells the
page when each subsystem was last heard from and what the latest air-quality readings are."""

from ioc.web.watch import SourceStat, SourceWatch, TelemetryReading

__all__ = ["SourceStat", "SourceWatch", "TelemetryReading"]
