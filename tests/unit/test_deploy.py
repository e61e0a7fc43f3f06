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

from ioc.config import load_settings, token_sha256
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
    assert set(services) == {"mosquitto-acl", "mosquitto", "influxdb", "ioc", "grafana"}
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
