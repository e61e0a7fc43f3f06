"""A webhook receiver for the e2e tests: Alertmanager's, or the daemon's `[[alerts.webhooks]]`."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any


class Receiver:
    """Alertmanager's webhook receiver: records every notification it sends."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses(self) -> list[str]:
        return [n["status"] for n in list(self.notifications)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
