"""The deployment files parse and say what production needs: the compose stack's services, secrets and
mounts; the image's non-root user; the systemd unit's sandbox; Mosquitto's persistence and ACL; the
config the stack mounts is one `ioc check` accepts. Docker itself is not run (not on these machines).

The sample mosquitto.conf is also started with a real Mosquitto (skipped when it is not installed), so
a key that Mosquitto 2.0 does not know is caught."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from ioc.config import HttpSettings, load_settings, token_sha256
from ioc.mosquitto_acl import render_acl, render_password_file
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


def test_a_real_mosquitto_accepts_the_sample_config(tmp_path: Path) -> None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    from ioc.config import Settings

    settings = Settings.model_validate(
        {"vendors": [{"name": "qtmt", "token_sha256": token_sha256("vendor-token"), "sources": ["qtmt-aqi"]}]}
    )
    (tmp_path / "passwords").write_text(render_password_file({"ioc": "daemon-pw", "qtmt": "vendor-token"}))
    (tmp_path / "acl").write_text(render_acl(settings, daemon_user="ioc"))
    for name in ("passwords", "acl"):
        (tmp_path / name).chmod(0o600)
    port = free_port()
    text = (DEPLOY / "mosquitto.conf").read_text(encoding="utf-8")
    text = text.replace("/etc/mosquitto/ioc/", f"{tmp_path}/").replace("/var/lib/mosquitto/", f"{tmp_path}/")
    text = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", text, flags=re.MULTILINE)
    if os.geteuid() == 0:
        text += "\nuser root\n"  # else mosquitto drops to `mosquitto` and cannot read the temp dir
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text)
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=10)
        except TimeoutError:
            process.kill()
            raise AssertionError(process.communicate()[0].decode(errors="replace")) from None

        def connect(username: str | None, password: str | None) -> ReasonCode:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            if username is not None:
                client.username_pw_set(username, password)
            got: list[ReasonCode] = []
            client.on_connect = lambda _c, _u, _f, reason, _p: got.append(reason)
            client.connect("127.0.0.1", port)
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                client.loop(0.1)
            client.disconnect()
            assert got, "no CONNACK"
            return got[0]

        assert not connect("qtmt", "vendor-token").is_failure
        assert connect("qtmt", "wrong").is_failure
        assert connect(None, None).is_failure  # allow_anonymous false
    finally:
        process.terminate()
        process.wait(10)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


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


def test_nginx_accepts_the_proxy_config(tmp_path: Path) -> None:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.skip("nginx is not installed (Debian package nginx)")
    # The file is an http-level include; `ioc` (the compose service) does not resolve here.
    text = (DEPLOY / "nginx" / "ioc.conf").read_text(encoding="utf-8")
    text = text.replace("server ioc:8080;", "server 127.0.0.1:8080;")
    text = re.sub(r"listen 80;", f"listen 127.0.0.1:{free_port()};", text)
    (tmp_path / "ioc.conf").write_text(text)
    (tmp_path / "nginx.conf").write_text(nginx_main_conf(tmp_path))
    result = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


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
