"""The fence around FastClient (connectors/mqtt/fastclient.py): it fails loudly when a paho-mqtt upgrade
breaks what FastClient relies on, and when FastClient starts relying on something the fence does not list.

If this fails after a paho upgrade: run the daemon with `[mqtt] client = "paho"` (it also falls back by
itself, logging `mqtt.fastclient_unfit`), then re-read paho's Client for each name reported, adapt
fastclient.py, and move PAHO_VERSIONS and the pin in pyproject.toml together."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from ioc.connectors.mqtt import fastclient
from ioc.connectors.mqtt.fastclient import (
    PAHO_MODULE_PRIVATE,
    PAHO_PRIVATE,
    PAHO_VERSIONS,
    FastClient,
    paho_problems,
)
from ioc.connectors.mqtt.session import MqttSession
from paho.mqtt.enums import CallbackAPIVersion

from ioc.config import MqttSettings

ROOT = Path(__file__).resolve().parents[2]
TAG = "paho-private"


def test_the_installed_paho_is_what_fastclient_was_made_for() -> None:
    problems = paho_problems()
    assert problems == [], "FastClient does not fit the installed paho-mqtt:\n  " + "\n  ".join(problems)


def test_pyproject_pins_the_range_the_fence_checks() -> None:
    pin = re.search(r'"paho-mqtt>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None and pin.groups() == PAHO_VERSIONS


def test_the_check_reports_what_a_changed_paho_would_break() -> None:
    """The fence can fail: a paho with a renamed parameter, a lost attribute and a new version."""

    class Changed(mqtt.Client):
        def _sock_recv(self, size: int) -> bytes:  # renamed parameter
            return b""

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            del self._manual_ack

    problems = paho_problems(Changed, version="2.3.0")
    assert problems[0] == "paho-mqtt 2.3.0 is outside 2.2 <= version < 2.3"
    assert "paho's Client._sock_recv takes ('self', 'size'), not ('self', 'bufsize')" in problems
    assert "paho's Client has no attribute _manual_ack" in problems
    assert len(problems) == 3


def _own_names() -> set[str]:
    """Private names FastClient defines itself (attributes it sets, methods paho does not have)."""
    tree = ast.parse(inspect.getsource(FastClient))
    own = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
           and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self"
           and not hasattr(mqtt.Client(CallbackAPIVersion.VERSION2), node.attr)}
    own |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
            and not hasattr(mqtt.Client, node.name)}
    return own


def test_every_use_of_a_paho_private_name_is_tagged_and_listed() -> None:
    source = Path(fastclient.__file__).read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    own = _own_names()
    used: set[str] = set()
    untagged: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            module_level = isinstance(node.value, ast.Name) and node.value.id == "mqtt"
            if module_level and name not in PAHO_MODULE_PRIVATE:
                continue  # paho's public API
            if not module_level and (not name.startswith("_") or name.startswith("__") or name in own):
                continue
        elif isinstance(node, ast.FunctionDef) and node.name.startswith("_") and hasattr(mqtt.Client, node.name) \
                and not node.name.startswith("__"):
            name = node.name  # an override of a private method
        else:
            continue
        used.add(name)
        if TAG not in lines[node.lineno - 1]:
            untagged.append(f"fastclient.py:{node.lineno}: {name}")
    assert untagged == [], f"paho-private uses without the `# {TAG}` tag: {untagged}"
    listed = set(PAHO_PRIVATE) | set(PAHO_MODULE_PRIVATE)
    assert used - listed == set(), "used but not in PAHO_PRIVATE / PAHO_MODULE_PRIVATE"
    assert listed - used == set(), "listed but no longer used: take them out of the fence"


def test_a_session_falls_back_to_stock_paho_when_fastclient_does_not_fit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ioc.connectors.mqtt import session as session_module
    from structlog.testing import capture_logs

    class Receiver:
        def on_raw_message(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None: ...
        def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None: ...
        def on_session(self, present: bool) -> None: ...

    fits = MqttSession(MqttSettings())._new_client(Receiver())
    assert type(fits) is FastClient
    assert type(MqttSession(MqttSettings(client="paho"))._new_client(Receiver())) is mqtt.Client
    monkeypatch.setattr(session_module, "installed_paho_problems", lambda: ("paho-mqtt 9.0 is outside ...",))
    with capture_logs() as logs:
        unfit = MqttSession(MqttSettings())._new_client(Receiver())
    assert type(unfit) is mqtt.Client
    assert [entry["event"] for entry in logs] == ["mqtt.fastclient_unfit"]
    assert logs[0]["problems"] == ["paho-mqtt 9.0 is outside ..."]
