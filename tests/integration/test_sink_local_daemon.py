"""`ioc run` with no InfluxDB (`[influx] url = ""`): points go through the shared batching loop to the
local store; an HTTP sender gets `durable: true` once they are written, and a restart keeps them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson

from ioc.config import token_sha256
from tests.e2e.daemon import VENDOR_TOKEN, DaemonProcess, assert_counting_rule
from tests.servers import free_port


def test_events_are_durable_in_the_local_store_and_survive_a_restart(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "ioc.toml"
    config.write_text(f'[http]\nlisten = "127.0.0.1:{port}"\n[mqtt]\nenabled = false\n[influx]\nurl = ""\n'
                      f'[store]\npath = "{tmp_path / "ioc.db"}"\nlocal_max_points = 50\n[log]\nformat = "json"\n'
                      f'[[vendors]]\nname = "qtmt"\ntoken_sha256 = "{token_sha256(VENDOR_TOKEN)}"\n'
                      f'sources = ["qtmt-aqi"]\n')
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    body = b"\n".join(orjson.dumps({"id": f"e{index}", "source": "qtmt-aqi", "type": "telemetry",
                                    "metric": "env.aqi", "value": index, "area": "22714",
                                    "time": (when + timedelta(microseconds=index)).isoformat()})
                      for index in range(60))
    daemon = DaemonProcess(config, port, tmp_path / "ioc.log")
    daemon.start()
    try:
        answer = httpx.post(f"{daemon.api}/api/v1/events", content=body, timeout=10,
                            headers={"Authorization": f"Bearer {VENDOR_TOKEN}",
                                     "Content-Type": "application/x-ndjson"})
        assert answer.status_code == 202
        assert answer.json()["accepted"] == 60 and answer.json()["durable"] is True
        assert daemon.metric_sum("ioc_sink_points_total", sink="local", outcome="written") == 60
        assert daemon.metric_sum("ioc_local_points", sink="local") == 50  # a ring of local_max_points
        assert daemon.metric_sum("ioc_local_points_evicted_total", sink="local") == 10
        assert daemon.metric_sum("ioc_sink_state", sink="local", state="writing") == 1
        assert_counting_rule(daemon)
        assert daemon.terminate() == 0
        daemon.start()
        assert daemon.metric_sum("ioc_local_points", sink="local") == 50
    finally:
        daemon.stop()
