"""The daemon's HTTP API (docs/http-api.md): event intake for vendors, health, readiness and metrics."""

from ioc.api.app import create_app
from ioc.api.server import HttpServer, serve

__all__ = ["HttpServer", "create_app", "serve"]
