"""The MQTT broker `ioc demo` brings along, so the demo needs no server installed (docs/operations.md
"embedded").

Mosquitto when it is installed (fast, MQTT 5, persistent sessions), with a password file and an ACL
generated from the demo's own config by `ioc.mosquitto_acl`, exactly as in production. Otherwise amqtt
in-process: pure Python, MQTT 3.1.1 only and slow (~500 msg/s, NOTES.md), ample for a demo; it listens on
127.0.0.1 only and admits anonymous clients, since amqtt's password plugin needs its own hash format.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from ioc.config import Settings
from ioc.errors import IocError
from ioc.mosquitto_acl import write_mosquitto_files

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """`preexec_fn` of the demo's children (its broker, its simulator): the kernel sends them SIGTERM
    when the demo dies, even by SIGKILL, so no broker or simulator outlives it holding ports. Loaded
    before any fork; the call itself is one system call."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

log = structlog.get_logger("ioc.embedded_broker")

BrokerKind = Literal["auto", "mosquitto", "amqtt"]


class BrokerError(IocError):
    """The embedded broker could not start (port taken, binary failing)."""


@dataclass
class EmbeddedBroker:
    kind: Literal["mosquitto", "amqtt"]
    port: int
    protocol: Literal["5", "3.1.1"]
    authenticated: bool
    _stop: Callable[[], None] = field(repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stop()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for_port(port: int, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BrokerError("the embedded broker exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"the embedded broker did not listen on 127.0.0.1:{port} within {timeout:g}s")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def start_embedded_broker(port: int, workdir: Path, *, settings: Settings, tokens: dict[str, str],
                          kind: BrokerKind = "auto") -> EmbeddedBroker:
    """Start a broker on 127.0.0.1:`port`. `tokens` are MQTT passwords by user (the daemon's user and
    each vendor of `settings`); Mosquitto enforces them and the ACL, amqtt cannot."""
    if not port_is_free(port):
        raise BrokerError(f"port {port} on 127.0.0.1 is taken (another broker?): choose one with --mqtt-port")
    binary = mosquitto_binary()
    if kind == "mosquitto" and binary is None:
        raise BrokerError("mosquitto is not installed (Debian: apt install mosquitto)")
    if binary is not None and kind in ("auto", "mosquitto"):
        return _start_mosquitto(binary, port, workdir, settings, tokens)
    return _start_amqtt(port)


def _start_mosquitto(binary: str, port: int, workdir: Path, settings: Settings,
                     tokens: dict[str, str]) -> EmbeddedBroker:
    folder = workdir / "mosquitto"
    passwords, acl = write_mosquitto_files(settings, folder, tokens)
    config = folder / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "persistence true",
        f"persistence_location {folder}/",
        "allow_anonymous false",
        f"password_file {passwords}",
        f"acl_file {acl}",
        "max_queued_messages 100000",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else mosquitto drops privileges and cannot read the demo's files
    config.write_text("\n".join(lines) + "\n")
    # A session of its own: Ctrl-C in the terminal reaches only `ioc demo`, which stops the broker last.
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=(folder / "mosquitto.log").open("ab"), start_new_session=True,
                               preexec_fn=exit_with_parent)  # noqa: PLW1509  # one prctl call, nothing allocated

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    try:
        _wait_for_port(port, 15.0, lambda: process.poll() is None)
    except BrokerError:
        stop()
        raise BrokerError(f"mosquitto did not start: see {folder / 'mosquitto.log'}") from None
    log.info("demo.broker_started", kind="mosquitto", port=port)
    return EmbeddedBroker("mosquitto", port, "5", True, stop)


def _start_amqtt(port: int) -> EmbeddedBroker:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    started = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, object] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # amqtt looks the loop up itself
        broker = Broker(config, loop=loop)
        holder["loop"], holder["broker"] = loop, broker
        try:
            loop.run_until_complete(broker.start())
        except BaseException as error:  # noqa: BLE001 - reported to the starting thread
            failure.append(error)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
    thread.start()
    if not started.wait(15) or failure:
        raise BrokerError(f"amqtt did not start: {failure[0] if failure else 'timeout'}")

    def stop() -> None:
        loop = holder["loop"]
        broker = holder["broker"]
        assert isinstance(loop, asyncio.AbstractEventLoop)
        try:
            asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(10)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.warning("demo.broker_shutdown_failed", kind="amqtt")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    # `broker.start()` returned: it listens (a probing connection would only make amqtt log a warning).
    log.info("demo.broker_started", kind="amqtt", port=port)
    return EmbeddedBroker("amqtt", port, "3.1.1", False, stop)
