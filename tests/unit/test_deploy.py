"""The deployment files parse and say what production needs: the compose stack's services, secrets and
mounts; the image's non-root user; the systemd unit's sandbox; Mosquitto's persistence and ACL; the
config the stack mounts is one `ioc check` accepts. Docker itself is not run (not on these machines).

The sample mosquitto.conf is also started with a real Mosquitto (skipped when it is not installed), so
a key that Mosquitto 2.0 does not know is caught."""

from __future__ import annotations

import configparser
import contextlib
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from ioc.config import HttpSettings, load_settings, token_sha256
from ioc.mosquitto_acl import render_acl, render_password_file
from tests.postgres_server import Postgres
from tests.servers import free_port, wait_for_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")))


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)  # systemd repeats keys (SystemCallFilter)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((DEPLOY / "ioc.service").read_text(encoding="utf-8"))
    return parser


def unit_values(key: str) -> list[str]:
    """Every value of `key` in [Service], repeats included (configparser keeps only the last)."""
    text = (DEPLOY / "ioc.service").read_text(encoding="utf-8")
    return re.findall(rf"^{key}=(.*)$", text, flags=re.MULTILINE)


def test_compose_has_the_stack_and_its_order() -> None:
    stack = compose()
    services = stack["services"]
    assert set(services) == {"mosquitto-acl", "mosquitto", "influxdb", "ioc", "nginx", "grafana"}
    assert services["influxdb"]["image"] == "influxdb:1.8"
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    assert services["ioc"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    # The broker starts only once its ACL was generated from the config, and reads what was written.
    assert "ioc mosquitto-acl --config /etc/ioc/ioc.toml" in " ".join(services["mosquitto-acl"]["command"])
    assert (
        services["mosquitto"]["depends_on"]["mosquitto-acl"]["condition"] == "service_completed_successfully"
    )
    assert "mosquitto-auth:/etc/mosquitto/ioc:ro" in services["mosquitto"]["volumes"]
    assert "mosquitto-auth:/mosquitto/auth" in services["mosquitto-acl"]["volumes"]
    assert set(services["ioc"]["depends_on"]) == {"mosquitto", "influxdb"}
    assert services["ioc"]["stop_grace_period"] == "90s"
    # Every secret used is declared, every declared file lives under deploy/secrets.
    declared = stack["secrets"]
    for name, service in services.items():
        for secret in service.get("secrets", []):
            assert secret in declared, (name, secret)
    assert all(spec["file"].startswith("./secrets/") for spec in declared.values())
    # Files the services mount exist in the repository.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    assert set(stack["volumes"]) >= {"mosquitto-data", "influxdb-data", "ioc-data", "grafana-data"}


def test_the_config_the_stack_mounts_is_valid(tmp_path: Path) -> None:
    text = (DEPLOY / "compose" / "ioc.toml").read_text(encoding="utf-8")
    declared = compose()["secrets"]
    for secret in re.findall(r'"/run/secrets/([\w.-]+)"', text):
        assert secret in declared, secret
        (tmp_path / secret).write_text(
            "mqtt-password\n" if secret == "mqtt_password" else token_sha256(secret)
        )
    config = tmp_path / "ioc.toml"
    config.write_text(text.replace("/run/secrets/", f"{tmp_path}/"), encoding="utf-8")
    settings = load_settings(config)
    assert settings.http.listen == "0.0.0.0:8080"
    assert settings.mqtt.password is not None and settings.mqtt.password.get_secret_value() == "mqtt-password"
    assert [vendor.name for vendor in settings.vendors] == ["dvc-binhthuan", "qtmt"]
    assert [operator.name for operator in settings.operators] == ["truc-ban-1"]
    assert settings.store.path == "/var/lib/ioc/ioc.db"


def test_the_image_runs_as_a_non_root_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE) == ["python:3.11-slim"] * 2
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert "pip install ." in dockerfile
    assert re.search(r'^CMD \["run", "--config", "/etc/ioc/ioc.toml"\]', dockerfile, flags=re.MULTILINE)
    # What the image copies exists.
    root = DEPLOY.parent
    for source in re.findall(r"^COPY (?!--)(.+) \S+$", dockerfile, flags=re.MULTILINE):
        for part in source.split():
            assert (root / part).exists(), part


def test_the_systemd_unit_is_hardened() -> None:
    parser = unit()
    service = parser["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, key
    assert service["User"] == "ioc" and service["Group"] == "ioc"
    assert service["ExecStart"].endswith("ioc run --config /etc/ioc/ioc.toml")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["StateDirectory"] == "ioc" and "/var/lib/ioc" in service["ReadWritePaths"].split()
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in unit_values("SystemCallFilter")
    assert service["CapabilityBoundingSet"] == ""
    assert int(service["TimeoutStopSec"]) >= 60
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in parser["Unit"]["After"]


def mosquitto_conf() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (DEPLOY / "mosquitto.conf").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            keys.setdefault(key, []).append(value)
    return keys


def test_the_mosquitto_sample_keeps_sessions_and_checks_every_client() -> None:
    conf = mosquitto_conf()
    assert conf["persistence"] == ["true"] and conf["allow_anonymous"] == ["false"]
    assert conf["password_file"] == ["/etc/mosquitto/ioc/passwords"]
    assert conf["acl_file"] == ["/etc/mosquitto/ioc/acl"]
    assert int(conf["max_queued_messages"][0]) >= 100_000


def test_grafana_provisioning_parses() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "ioc.yaml").read_text())["providers"]
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    assert (
        "./grafana/provisioning:/etc/grafana/provisioning:ro" in compose()["services"]["grafana"]["volumes"]
    )
    [source] = yaml.safe_load((provisioning / "datasources" / "influxdb.yaml").read_text())["datasources"]
    assert source["url"] == "http://influxdb:8086"


def test_the_readme_says_docker_was_not_tested() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "not tested" in readme.lower()
    for step in ("ioc mosquitto-acl", "systemctl", "share_group", "$share/", "TLS", "Grafana"):
        assert step in readme, step


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    return binary


@contextlib.contextmanager
def sample_mosquitto(folder: Path, acl: str, credentials: dict[str, str], extra: str = "") -> Iterator[int]:
    """deploy/mosquitto.conf (and `extra` after it) run by a real Mosquitto on a free loopback port, with
    `acl` and these users; yields the port, and checks the broker is gone after."""
    binary = mosquitto_binary()
    (folder / "passwords").write_text(render_password_file(credentials))
    (folder / "acl").write_text(acl)
    for name in ("passwords", "acl"):
        (folder / name).chmod(0o600)
    port = free_port()
    text = (DEPLOY / "mosquitto.conf").read_text(encoding="utf-8")
    text = text.replace("/etc/mosquitto/ioc/", f"{folder}/").replace("/var/lib/mosquitto/", f"{folder}/")
    text = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", text, flags=re.MULTILINE)
    if os.geteuid() == 0:
        text += "\nuser root\n"  # else mosquitto drops to `mosquitto` and cannot read the temp dir
    text += extra
    conf = folder / "mosquitto.conf"
    conf.write_text(text)
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=10)
        except TimeoutError:
            process.kill()
            raise AssertionError(process.communicate()[0].decode(errors="replace")) from None
        yield port
    finally:
        process.terminate()
        process.wait(10)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def mqtt_client(port: int, username: str | None, password: str | None) -> tuple[mqtt.Client, ReasonCode]:
    """An MQTT 5 client connected (or refused) to the broker on `port`, and the CONNACK's reason."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    got: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: got.append(reason)
    client.connect("127.0.0.1", port)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        client.loop(0.1)
    assert got, "no CONNACK"
    return client, got[0]


def test_a_real_mosquitto_accepts_the_sample_config(tmp_path: Path) -> None:
    from ioc.config import Settings

    settings = Settings.model_validate(
        {"vendors": [{"name": "qtmt", "token_sha256": token_sha256("vendor-token"), "sources": ["qtmt-aqi"]}]}
    )
    credentials = {"ioc": "daemon-pw", "qtmt": "vendor-token"}
    with sample_mosquitto(tmp_path, render_acl(settings, daemon_user="ioc"), credentials) as port:
        for username, password, refused in (("qtmt", "vendor-token", False), ("qtmt", "wrong", True),
                                            (None, None, True)):  # allow_anonymous false
            client, reason = mqtt_client(port, username, password)
            client.disconnect()
            assert reason.is_failure is refused, (username, password)


# --- the reverse proxy ------------------------------------------------------------------------------------

Directive = tuple[tuple[str, ...], str, list[str]]  # (enclosing blocks, name, arguments)


def nginx_directives(text: str) -> list[Directive]:
    """Every directive of an nginx config with the blocks it is in (e.g. `("server", "location = /x")`)."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', re.sub(r"#[^\n]*", "", text))
    found: list[Directive] = []
    blocks: list[str] = []
    words: list[str] = []
    for token in tokens:
        if token == ";":
            found.append((tuple(blocks), words[0], words[1:]))
            words = []
        elif token == "{":
            blocks.append(" ".join(words))
            words = []
        elif token == "}":
            blocks.pop()
        else:
            words.append(token)
    assert not blocks and not words, "unbalanced nginx config"
    return found


def nginx_seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match, value
    return int(match[1]) * units[match[2] or "s"]


def nginx_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG])?", value)
    assert match, value
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[(match[2] or "").lower()]


def proxy_directives() -> list[Directive]:
    return nginx_directives((DEPLOY / "nginx" / "ioc.conf").read_text(encoding="utf-8"))


def proxy() -> dict[tuple[tuple[str, ...], str], list[str]]:
    """(blocks, name) -> arguments, of directives that appear once in their block."""
    return {(blocks, name): args for blocks, name, args in proxy_directives()}


SERVER = ("server",)
STREAM = ("server", "location = /api/v1/stream")


def test_the_proxy_applies_the_daemons_client_limits() -> None:
    conf = proxy()
    http = HttpSettings()  # the defaults the sample config keeps
    assert nginx_bytes(conf[SERVER, "client_max_body_size"][0]) == http.max_body
    assert nginx_seconds(conf[SERVER, "client_header_timeout"][0]) == http.header_timeout
    assert nginx_seconds(conf[SERVER, "client_body_timeout"][0]) <= http.body_timeout
    assert nginx_seconds(conf[SERVER, "keepalive_timeout"][0]) == http.keepalive_timeout
    assert nginx_seconds(conf[SERVER, "send_timeout"][0]) > 0
    # nginx never reuses an upstream connection the daemon is about to close as idle.
    upstream = ("upstream ioc_api",)
    assert nginx_seconds(conf[upstream, "keepalive_timeout"][0]) < http.keepalive_timeout
    assert conf[upstream, "server"] == ["ioc:8080"]
    # Connections per client address, streams per address fewer than the daemon's cap.
    zones = {args[1].split("=")[1].split(":")[0] for _, name, args in proxy_directives()
             if name == "limit_conn_zone"}
    assert conf[SERVER, "limit_conn"][0] in zones
    zone, streams = conf[STREAM, "limit_conn"]
    assert zone in zones and int(streams) < http.max_streams


def test_the_proxy_streams_sse_unbuffered_and_without_a_read_timeout() -> None:
    from ioc.alerts.config import AlertsSettings

    conf = proxy()
    assert conf[STREAM, "proxy_pass"] == ["http://ioc_api"]
    assert conf[STREAM, "proxy_buffering"] == ["off"]
    # nginx has no "off" for it: far longer than the pings that keep the stream busy.
    assert nginx_seconds(conf[STREAM, "proxy_read_timeout"][0]) >= 3600
    assert nginx_seconds(conf[STREAM, "proxy_read_timeout"][0]) > 10 * AlertsSettings().stream_heartbeat
    # Keep-alive to the daemon: HTTP/1.1 and no `Connection: close` passed on.
    assert conf[SERVER, "proxy_http_version"] == ["1.1"]
    assert [SERVER, "proxy_set_header", ["Connection", '""']] in [list(d) for d in proxy_directives()]


def test_compose_puts_the_proxy_in_front_of_the_daemon() -> None:
    services = compose()["services"]
    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    assert "./nginx/ioc.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert nginx["depends_on"]["ioc"]["condition"] == "service_healthy"
    # Clients reach the daemon through the proxy; its own port is on the host's loopback only.
    assert all(port.startswith("127.0.0.1:") for port in services["ioc"]["ports"])


def nginx_check(folder: Path, conf: str, upstreams: list[str]) -> None:
    """`nginx -t` of the http-level file nginx/`conf`, its upstream servers (compose services, which do not
    resolve here) pointed at loopback ports, inside a main config that writes only into `folder`."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.skip("nginx is not installed (Debian package nginx)")
    text = (DEPLOY / "nginx" / conf).read_text(encoding="utf-8")
    for upstream in upstreams:
        assert f"server {upstream}" in text, upstream
        text = text.replace(f"server {upstream}", f"server 127.0.0.1:{free_port()}")
    text = re.sub(r"listen 80;", f"listen 127.0.0.1:{free_port()};", text)
    (folder / "ioc.conf").write_text(text)
    (folder / "nginx.conf").write_text(nginx_main_conf(folder))
    result = subprocess.run([binary, "-t", "-p", str(folder), "-c", str(folder / "nginx.conf")],
                            check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_accepts_the_proxy_config(tmp_path: Path) -> None:
    nginx_check(tmp_path, "ioc.conf", ["ioc:8080"])


def nginx_main_conf(folder: Path) -> str:
    """A main nginx.conf around the http-level ioc.conf in `folder`, writing only inside it."""
    return f"""
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/ioc.conf;
}}
"""


# --- high availability: two nodes on one PostgreSQL (docker-compose.ha.yml) -------------------------------

NODES = ("ioc-a", "ioc-b")
HA_CONFIG = "./compose/ioc-ha.toml"


def ha_compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.ha.yml").read_text(encoding="utf-8")))


def ha_proxy_directives() -> list[Directive]:
    return nginx_directives((DEPLOY / "nginx" / "ioc-ha.conf").read_text(encoding="utf-8"))


def node_config(folder: Path, node: str) -> tuple[Path, dict[str, str]]:
    """The HA config as `node` sees it: its compose environment, and the file with the Docker secrets and
    the node's volume moved into `folder` (the secrets hold what `ioc check` will accept)."""
    stack = ha_compose()
    environment = {name: str(value) for name, value in stack["services"][node]["environment"].items()}
    text = (DEPLOY / "compose" / "ioc-ha.toml").read_text(encoding="utf-8")
    for secret in re.findall(r'"/run/secrets/([\w.-]+)"', text):
        secret_file = folder / "secrets" / secret
        secret_file.parent.mkdir(exist_ok=True)
        secret_file.write_text("a-password\n" if secret.endswith("password") else token_sha256(secret))
    volume = folder / node
    volume.mkdir()
    text = text.replace("/run/secrets/", f"{folder}/secrets/").replace("/var/lib/ioc/", f"{volume}/")
    environment = {name: value.replace("/var/lib/ioc/", f"{volume}/") for name, value in environment.items()}
    config = folder / f"{node}.toml"
    config.write_text(text, encoding="utf-8")
    return config, environment


def test_ha_compose_runs_two_nodes_on_one_postgres() -> None:
    stack = ha_compose()
    services = stack["services"]
    assert set(services) == {"mosquitto-acl", "mosquitto", "influxdb", "postgres", "ioc-migrate", *NODES,
                             "nginx", "grafana"}
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/pg_password"
    assert "pg_password" in postgres["secrets"]
    # The migrations once, before the nodes; the nodes after the broker, InfluxDB and PostgreSQL.
    assert services["ioc-migrate"]["command"][:2] == ["store", "migrate"]
    assert services["ioc-migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    names, client_ids, paths, volumes = set(), set(), set(), set()
    for node in NODES:
        service = services[node]
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert service["depends_on"]["ioc-migrate"] == {"condition": "service_completed_successfully"}
        assert {"mosquitto", "influxdb", "postgres"} <= set(service["depends_on"])
        assert f"{HA_CONFIG}:/etc/ioc/ioc.toml:ro" in service["volumes"]
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])
        environment = service["environment"]
        names.add(environment["IOC_CLUSTER__NODE"])
        client_ids.add(environment["IOC_MQTT__CLIENT_ID"])
        paths.add(environment["IOC_STORE__PATH"])
        [volume] = [v.split(":")[0] for v in service["volumes"] if v.endswith(":/var/lib/ioc")]
        volumes.add(volume)
        assert volume in stack["volumes"]
    # Each node its own name, broker session, node-local file and volume (nothing node-local is shared).
    assert names == set(NODES) and len(client_ids) == len(paths) == len(volumes) == len(NODES)
    # Every secret a service uses is declared, each declared file lives under deploy/secrets.
    declared = stack["secrets"]
    for name, service in services.items():
        for secret in service.get("secrets", []):
            assert secret in declared, (name, secret)
    assert all(spec["file"].startswith("./secrets/") for spec in declared.values())
    # Everything that loads the config has every secret it names (else it exits at start).
    wanted = set(re.findall(r'"/run/secrets/([\w.-]+)"', (DEPLOY / "compose" / "ioc-ha.toml").read_text()))
    assert "pg_password" in wanted
    for name, service in services.items():
        if f"{HA_CONFIG}:/etc/ioc/ioc.toml:ro" in service.get("volumes", []):
            assert wanted <= set(service["secrets"]), name
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    # The proxy in front of both nodes, with the HA proxy config naming exactly them.
    nginx = services["nginx"]
    assert "./nginx/ioc-ha.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert set(nginx["depends_on"]) == set(NODES)
    upstream = [args[0] for blocks, name, args in ha_proxy_directives()
                if blocks == ("upstream ioc_api",) and name == "server"]
    assert upstream == [f"{node}:8080" for node in NODES]


@pytest.mark.parametrize("node", NODES)
def test_each_ha_node_passes_ioc_check(tmp_path: Path, node: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config, environment = node_config(tmp_path, node)
    for name in [name for name in os.environ if name.startswith("IOC_")]:
        monkeypatch.delenv(name)
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "check", "--config", str(config)],
                            env={**os.environ, **environment}, check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(config)
    assert settings.cluster.node_name() == node and settings.mqtt.client_id == node
    assert settings.store.path.endswith(f"/{node}/{node}.db")
    assert settings.store.database_url() == "postgresql://ioc@postgres:5432/ioc"
    assert settings.store.password() == "a-password"
    assert settings.mqtt.share_group == ""  # every node must receive every event (CONTRACT §8)


def test_the_ha_acl_lets_the_nodes_republish_http_events(tmp_path: Path) -> None:
    """With PostgreSQL, `ioc mosquitto-acl` lets the daemon's user publish events (a node republishes its
    HTTP intake for the other nodes); a real Mosquitto with the sample config acknowledges such a publish,
    and refuses it (MQTT 5 "not authorized") under a single node's ACL."""
    mosquitto_binary()
    config, environment = node_config(tmp_path, "ioc-a")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        ha = load_settings(config)
    single = ha.model_copy(update={"store": ha.store.model_copy(update={"url": ""})})
    for settings, allowed in ((ha, True), (single, False)):
        folder = tmp_path / f"broker-{allowed}"
        folder.mkdir()
        acl = render_acl(settings, daemon_user=ha.mqtt.username)
        with sample_mosquitto(folder, acl, {ha.mqtt.username: "daemon-pw"}) as port:
            reason = puback(port, ha.mqtt.username, "daemon-pw", "ioc/v1/events/qtmt-aqi")
        assert reason.is_failure is not allowed, reason


def puback(port: int, username: str, password: str, topic: str) -> ReasonCode:
    """The reason code of the broker's PUBACK to one QoS 1 publish (MQTT 5)."""
    client, reason = mqtt_client(port, username, password)
    assert not reason.is_failure, reason
    acks: list[ReasonCode] = []
    client.on_publish = lambda _c, _u, _mid, code, _p: acks.append(code)
    client.publish(topic, b'{"id": "x"}', qos=1)
    deadline = time.monotonic() + 10
    while not acks and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    assert acks, "no PUBACK"
    return acks[0]


def test_nginx_accepts_the_ha_proxy_config(tmp_path: Path) -> None:
    nginx_check(tmp_path, "ioc-ha.conf", [f"{node}:8080" for node in NODES])


def test_the_ha_proxy_is_the_single_proxy_with_two_upstreams_and_retries() -> None:
    single, ha = proxy_directives(), ha_proxy_directives()
    # Every client limit, timeout and stream setting of ioc.conf holds here too (the files cannot drift).
    for directive in single:
        if directive[0] != ("upstream ioc_api",):
            assert directive in ha, directive
    upstream = [name for blocks, name, _ in ha if blocks == ("upstream ioc_api",)]
    assert upstream.index("hash") < upstream.index("keepalive")  # nginx wants the method first
    conf = {(blocks, name): args for blocks, name, args in ha}
    # Idempotent requests and unsent ones go to the other node; a sent POST does not, except events.
    assert "non_idempotent" not in conf[SERVER, "proxy_next_upstream"]
    assert {"error", "timeout", "http_502"} <= set(conf[SERVER, "proxy_next_upstream"])
    events = ("server", "location = /api/v1/events")
    assert "non_idempotent" in conf[events, "proxy_next_upstream"]
    assert "http_503" not in conf[events, "proxy_next_upstream"]  # backpressure: the vendor waits
    assert conf[events, "proxy_pass"] == ["http://ioc_api"]
    assert int(conf[SERVER, "proxy_next_upstream_tries"][0]) == len(NODES)


def test_keepalived_accepts_the_sample(tmp_path: Path) -> None:
    text = (DEPLOY / "keepalived" / "keepalived.conf").read_text(encoding="utf-8")
    # The VIP follows a proxy that answers /readyz (through nginx: at least one daemon ready).
    [script] = re.findall(r"vrrp_script (\w+) \{", text)
    assert re.search(rf"track_script \{{\s*{script}\s*\}}", text)
    assert "http://127.0.0.1/readyz" in text and "nopreempt" in text and "virtual_ipaddress" in text
    binary = shutil.which("keepalived") or "/usr/sbin/keepalived"
    if not os.path.exists(binary):
        pytest.skip("keepalived is not installed (Debian package keepalived)")

    def config_test(conf: Path) -> tuple[int, str]:
        # keepalived 2.2 ends its config test by SIGTERM to its own process group (a session of its own
        # here), whatever it found: its findings are the output, one line each, none for a clean file.
        result = subprocess.run([binary, "--config-test", "-f", str(conf)], check=False, capture_output=True,
                                text=True, timeout=30, start_new_session=True, cwd=tmp_path)
        return result.returncode, result.stdout + result.stderr

    code, output = config_test(DEPLOY / "keepalived" / "keepalived.conf")
    assert code in (0, -signal.SIGTERM) and not output.strip(), (code, output)
    broken = tmp_path / "broken.conf"
    broken.write_text(text.replace("priority 150", "priority 999"))
    code, output = config_test(broken)
    assert "number '999' outside range" in output, (code, output)


def test_the_readme_says_how_to_run_and_check_a_cluster() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## High availability"):]
    for needle in ("docker-compose.ha.yml", "not tested", "ioc store migrate", "GET /api/v1/cluster",
                   "ioc_cluster_leader", "/readyz", "Patroni", "EMQX", "keepalived", "share_group"):
        assert needle.lower() in section.lower(), needle


def collect(port: int, filters: list[str], seconds: float) -> list[mqtt.MQTTMessage]:
    """The messages an anonymous MQTT 5 subscriber to `filters` receives on `port` within `seconds`."""
    client, reason = mqtt_client(port, None, None)
    assert not reason.is_failure, reason
    got: list[mqtt.MQTTMessage] = []
    client.on_message = lambda _c, _u, message: got.append(message)
    client.subscribe([(topic, 1) for topic in filters])
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    return got


def test_the_national_bridge_carries_alerts_and_dossier_events(tmp_path: Path) -> None:
    """deploy/mosquitto-national-bridge.conf on a group's broker (the sample mosquitto.conf, real Mosquitto)
    forwards alert changes and the retained alert state under national/south/, and the bridged sources'
    events as they are, to a national broker; other events stay in the group."""
    binary = mosquitto_binary()
    national_port = free_port()
    national_conf = tmp_path / "national.conf"
    national_conf.write_text(f"listener {national_port} 127.0.0.1\nallow_anonymous true\n"
                             + ("user root\n" if os.geteuid() == 0 else ""))
    national = subprocess.Popen([binary, "-c", str(national_conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    bridge = (DEPLOY / "mosquitto-national-bridge.conf").read_text(encoding="utf-8")
    bridge = bridge.replace("national-broker.example.vn:8883", f"127.0.0.1:{national_port}")
    bridge = re.sub(r"^bridge_cafile .*$", "", bridge, flags=re.MULTILINE)  # no TLS between loopback ports
    from ioc.config import Settings

    settings = Settings.model_validate({"vendors": [
        {"name": "dvc", "token_sha256": token_sha256("dvc-token"), "sources": ["dvc-binhthuan"]},
        {"name": "qtmt", "token_sha256": token_sha256("qtmt-token"), "sources": ["qtmt-aqi"]}]})
    credentials = {"ioc": "daemon-pw", "dvc": "dvc-token", "qtmt": "qtmt-token"}
    group_folder = tmp_path / "group"
    group_folder.mkdir()
    try:
        wait_for_port(national_port, timeout=10)
        with sample_mosquitto(group_folder, render_acl(settings, daemon_user="ioc"), credentials,
                              extra="\n" + bridge) as group_port:
            listener, _ = mqtt_client(national_port, None, None)
            heard: list[mqtt.MQTTMessage] = []
            listener.on_message = lambda _c, _u, message: heard.append(message)
            listener.subscribe([("national/south/ioc/v1/alerts/#", 1), ("ioc/v1/events/#", 1)])
            daemon, _ = mqtt_client(group_port, "ioc", "daemon-pw")
            for client in (listener, daemon):
                client.loop_start()
            try:
                # The bridge connects in its own time: publish alert changes until one reaches the national side.
                deadline = time.monotonic() + 30
                while not heard and time.monotonic() < deadline:
                    daemon.publish("ioc/v1/alerts/aqi-bad", b'{"notification_id": "n-probe"}', qos=1)
                    time.sleep(0.5)
                assert heard, "the bridge carried nothing within 30 s"
                daemon.publish("ioc/v1/alerts/state/fp-1", b'{"state": "firing"}', qos=1, retain=True)
                for vendor, source in (("dvc", "dvc-binhthuan"), ("qtmt", "qtmt-aqi")):
                    topic = f"ioc/v1/events/{source}"
                    assert not puback(group_port, vendor, credentials[vendor], topic).is_failure
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not any(m.topic.startswith("ioc/v1/events/") for m in heard):
                    time.sleep(0.1)
                time.sleep(1.0)  # room for a message that should not come
                seen = collect(national_port, ["national/south/ioc/v1/alerts/state/#"], 3.0)
            finally:
                for client in (listener, daemon):
                    client.loop_stop()
                    client.disconnect()
    finally:
        national.terminate()
        national.wait(10)
    # The retained state arrives retained for a subscriber that comes later, under the group's prefix.
    [state] = [message for message in seen if message.topic == "national/south/ioc/v1/alerts/state/fp-1"]
    assert state.retain
    # The bridged source's event as it was published; the other source stays in its group.
    assert [m.topic for m in heard if m.topic.startswith("ioc/v1/events/")] == ["ioc/v1/events/dvc-binhthuan"]


def test_a_multi_host_postgresql_url_reaches_the_primary(tmp_path: Path, postgres: Postgres) -> None:
    """README "PostgreSQL's own high availability": libpq's multi-host URL in `[store] url` (the hosts in
    turn, the first that accepts writes). Here the first host is down and the second is a real PostgreSQL."""
    database = postgres.new_database("ha").rsplit("/", 1)[1]
    url = (f"postgresql://postgres@127.0.0.1,127.0.0.1/{database}"
           f"?port={free_port()},{postgres.port}&target_session_attrs=read-write")
    config = tmp_path / "ioc.toml"
    config.write_text(f'[store]\npath = "{tmp_path}/local.db"\nurl = "{url}"\n', encoding="utf-8")
    environment = {name: value for name, value in os.environ.items() if not name.startswith("IOC_")}
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "store", "migrate", "--config", str(config)],
                            env=environment, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert postgres.psql("SELECT count(*) FROM schema_migrations", database=database) != "0"


class Upstream:
    """A stand-in for one node behind the HA proxy: records each request (method, path, body) and answers
    202 with its name, or, while `dies` holds a path, reads that request whole and closes the connection
    without an answer, as a node SIGKILLed in the middle of it; `busy` paths are answered 503."""

    def __init__(self, name: str, log: list[tuple[str, str, str, bytes]], dies: set[str], busy: set[str]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def handle_one(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                log.append((name, self.command, self.path, body))
                if self.path in dies:
                    dies.discard(self.path)  # the next node lives
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                answer = b'{"node": "%s"}' % name.encode()
                self.send_response(503 if self.path in busy else 202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = handle_one

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def ha_proxy(folder: Path, dies: set[str], busy: set[str]) -> Iterator[tuple[str, list[Any]]]:
    """nginx/ioc-ha.conf run by a real nginx in front of two `Upstream`s: its URL and the upstreams' log."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.skip("nginx is not installed (Debian package nginx)")
    log: list[tuple[str, str, str, bytes]] = []
    upstreams = [Upstream(node, log, dies, busy) for node in NODES]
    port = free_port()
    text = (DEPLOY / "nginx" / "ioc-ha.conf").read_text(encoding="utf-8")
    for node, upstream in zip(NODES, upstreams, strict=True):
        text = text.replace(f"server {node}:8080", f"server 127.0.0.1:{upstream.port}")
    (folder / "ioc.conf").write_text(text.replace("listen 80;", f"listen 127.0.0.1:{port};"))
    main = nginx_main_conf(folder)
    if os.geteuid() == 0:
        main = "user root;\n" + main  # workers would run as nobody, who cannot enter the temp dir
    (folder / "nginx.conf").write_text(main)
    process = subprocess.Popen([binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=10)
        yield f"http://127.0.0.1:{port}", log
    finally:
        process.terminate()
        process.wait(10)
        for upstream in upstreams:
            upstream.close()


@pytest.mark.parametrize(("method", "path", "resent"), [
    ("POST", "/api/v1/events", True),                 # idempotent by the dedup: the other node takes it
    ("POST", "/api/v1/alerts/a-1/ack", False),        # not safe twice: the operator gets the 502
    ("GET", "/api/v1/alerts", True),                  # reads go to the other node
])
def test_the_ha_proxy_moves_a_request_from_a_node_that_dies_under_it(
        tmp_path: Path, method: str, path: str, resent: bool) -> None:
    body = b'{"id": "e-1", "source": "qtmt-aqi"}' if method == "POST" else b""
    with ha_proxy(tmp_path, dies={path}, busy=set()) as (url, log):
        answer = httpx.request(method, url + path, content=body, timeout=30)
    first, *others = log
    assert first[1:] == (method, path, body)
    if resent:
        assert answer.status_code == 202, answer.text
        # The same request, whole, reached the other node, and its answer is the client's.
        [(node, *request)] = others
        assert node != first[0] and tuple(request) == (method, path, body)
        assert answer.json() == {"node": node}
    else:
        assert answer.status_code == 502 and not others


def test_the_ha_proxy_leaves_backpressure_to_the_vendor(tmp_path: Path) -> None:
    """A 503 on events is the daemon's backpressure: answered to the vendor (who honours Retry-After), not
    resent to the other node of a busy cluster."""
    with ha_proxy(tmp_path, dies=set(), busy={"/api/v1/events"}) as (url, log):
        answer = httpx.post(url + "/api/v1/events", content=b"{}", timeout=30)
    assert answer.status_code == 503 and len(log) == 1
