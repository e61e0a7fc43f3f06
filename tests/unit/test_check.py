"""`ioc check` finds every problem `ioc run` would refuse at its start, with the same message (issue 10):
for each class of problem, both exit 1 and print the same `file:line: key: reason` line. `ioc check` runs
in-process (typer's runner); `ioc run` as the real command, a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ioc.cli import app
from ioc.config import topic_filter_problem, url_problem
from tests.servers import find_binary

runner = CliRunner()

# A config that runs as it is (no broker or InfluxDB needed to start): each case changes one thing.
BASE = """[http]
listen = "127.0.0.1:0"

[mqtt]
enabled = false

[influx]
url = ""

[store]
path = "{tmp}/var/ioc.db"

[log]
format = "json"
level = "error"
"""


def _certificates(directory: Path) -> dict[str, Path]:
    """Two self-signed certificates with their keys (openssl), and a file that is no certificate."""
    openssl = find_binary("openssl", "openssl")
    made: dict[str, Path] = {}
    for name in ("a", "b"):
        key, cert = directory / f"{name}.key", directory / f"{name}.pem"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", f"/CN={name}"], check=True, capture_output=True)
        made[f"{name}.key"], made[f"{name}.pem"] = key, cert
    made["junk"] = directory / "junk.pem"
    made["junk"].write_text("not a certificate\n")
    return made


def _mqtt(url: str, **keys: object) -> str:
    lines = ["[mqtt]", f'url = "{url}"', 'client_id = "check-test"'] + [f'{key} = "{value}"' for key, value in keys.items()]
    return "\n".join(lines)


WEBHOOK = 'level = "error"\n\n[[alerts.webhooks]]\nurl = "https://chat.example.vn/a b"'
SUBSCRIBE = '[mqtt]\nenabled = false\nsubscribe = ["ioc/v1/events/#/x"]'
RECONNECT = '[mqtt]\nenabled = false\nreconnect_min = "10m"\nreconnect_max = "1s"'

# (id, change to the base config given the tmp folder and the certificates, environment, expected problem
# after `file:line: `)
Case = tuple[str, Callable[[Path, dict[str, Path]], tuple[str, str]], dict[str, str], str]
CASES: list[Case] = [
    ("tls-ca-missing", lambda tmp, c: ("[mqtt]\nenabled = false", _mqtt("mqtts://127.0.0.1:1",
                                                                        tls_ca=tmp / "nope.pem")), {},
     "mqtt.tls_ca: cannot read {tmp}/nope.pem: no such file"),
    ("tls-ca-not-a-certificate", lambda tmp, c: ("[mqtt]\nenabled = false", _mqtt("mqtts://127.0.0.1:1",
                                                                                  tls_ca=c["junk"])), {},
     "mqtt.tls_ca: {tmp}/junk.pem holds no usable CA certificate: NO_CERTIFICATE_OR_CRL_FOUND"),
    ("tls-key-of-another-certificate", lambda tmp, c: ("[mqtt]\nenabled = false", _mqtt(
        "mqtts://127.0.0.1:1", tls_cert=c["a.pem"], tls_key=c["b.key"])), {},
     "mqtt.tls_key: the certificate {tmp}/a.pem and its key {tmp}/b.key do not load: KEY_VALUES_MISMATCH"),
    ("tls-without-mqtts", lambda tmp, c: ("[mqtt]\nenabled = false", _mqtt("mqtt://127.0.0.1:1",
                                                                           tls_ca=c["a.pem"])), {},
     "mqtt.tls_ca: set, but url 'mqtt://127.0.0.1:1' is not mqtts://"),
    ("embedded-broker", lambda tmp, c: ("[mqtt]\nenabled = false", _mqtt("embedded")), {},
     "mqtt.url: 'embedded' is only available in `ioc demo`"),
    ("listen-address-not-here", lambda tmp, c: ('listen = "127.0.0.1:0"', 'listen = "192.0.2.1:8080"'), {},
     "http.listen: cannot listen on 192.0.2.1:8080: Cannot assign requested address"),
    ("listen-host-unknown", lambda tmp, c: ('listen = "127.0.0.1:0"', 'listen = "no-such-host.invalid:8080"'),
     {}, "http.listen: cannot listen on no-such-host.invalid:8080: "),
    ("store-under-a-file", lambda tmp, c: ("/var/ioc.db", "/junk.pem/ioc.db"), {},
     "store.path: cannot create {tmp}/junk.pem/ioc.db: {tmp}/junk.pem is not a folder"),
    ("store-is-a-folder", lambda tmp, c: ("/var/ioc.db", ""), {},
     "store.path: {tmp} is a folder; give the store's file, e.g. {tmp}/ioc.db"),
    ("influx-url-without-host", lambda tmp, c: ('url = ""', 'url = "http://"'), {},
     "influx: url 'http://' is not http(s)://HOST:PORT"),
    ("webhook-url-with-a-space", lambda tmp, c: ('level = "error"', WEBHOOK), {},
     "alerts.webhooks.0.url: 'https://chat.example.vn/a b' is not a usable URL: a space in the URL"),
    ("reconnect-range", lambda tmp, c: ("[mqtt]\nenabled = false", RECONNECT), {},
     "mqtt: reconnect_max must not be less than reconnect_min"),
    ("subscribe-filter", lambda tmp, c: ("[mqtt]\nenabled = false", SUBSCRIBE), {},
     "mqtt.subscribe: 'ioc/v1/events/#/x' is not an MQTT topic filter: '#' must be a whole level, the last"),
    ("failpoints", lambda tmp, c: ("", ""), {"IOC_FAILPOINTS": "no.such.point=abort"},
     "IOC_FAILPOINTS: unknown failpoint 'no.such.point'"),
    ("override-blamed-on-its-variable", lambda tmp, c: ("", ""), {"IOC_HTTP__LISTEN": "192.0.2.1:8080"},
     ("environment IOC_HTTP__LISTEN='192.0.2.1:8080': http.listen: cannot listen on 192.0.2.1:8080: Cannot "
      "assign requested address")),
]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _certificates(tmp_path_factory.mktemp("certs"))


def _config(tmp_path: Path, certificates: dict[str, Path], change: Callable[..., tuple[str, str]]) -> Path:
    for path in certificates.values():  # the certificates in this test's folder, named in messages
        (tmp_path / path.name).write_bytes(path.read_bytes())
    local = {name: tmp_path / path.name for name, path in certificates.items()}
    old, new = change(tmp_path, local)
    text = BASE.format(tmp=tmp_path)
    assert old in text
    config = tmp_path / "ioc.toml"
    config.write_text(text.replace(old, new, 1))
    return config


def _problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("{")]  # not the JSON log lines


@pytest.mark.parametrize(("change", "environ", "expected"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_check_and_run_refuse_the_same_problem_with_the_same_line(
        tmp_path: Path, certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        change: Callable[..., tuple[str, str]], environ: dict[str, str], expected: str) -> None:
    config = _config(tmp_path, certificates, change)
    for name in [name for name in os.environ if name.startswith("IOC_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    expected = expected.format(tmp=tmp_path)
    checked = runner.invoke(app, ["check", "--config", str(config)])
    assert checked.exit_code == 1, checked.output
    [line] = [line for line in checked.output.splitlines() if expected in line]
    if not line.startswith("environment ") and not line.startswith("IOC_"):
        assert line.startswith(f"{config}:"), line  # file:line: (the key's line where it has one)
    ran = subprocess.run([sys.executable, "-m", "ioc.cli", "run", "--config", str(config)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert ran.returncode == 1, ran.stderr
    assert line in _problem_lines(ran.stderr), (line, ran.stderr)


def test_valid_tls_files_pass(tmp_path: Path, certificates: dict[str, Path]) -> None:
    """The positive control of the TLS cases: a certificate with its own key and a CA that loads."""
    config = _config(tmp_path, certificates, lambda tmp, c: ("[mqtt]\nenabled = false", _mqtt(
        "mqtts://127.0.0.1:1", tls_ca=c["b.pem"], tls_cert=c["a.pem"], tls_key=c["a.key"])))
    checked = runner.invoke(app, ["check", "--config", str(config)])
    assert checked.exit_code == 0, checked.output
    assert checked.output.startswith(f"{config}: ok")


@pytest.mark.parametrize(("topic", "problem"), [
    ("ioc/v1/events/#", None), ("ioc/+/events/+", None), ("#", None), ("+", None),
    ("", "empty"), ("a/#/b", "'#' must be a whole level, the last"), ("a#", "'#' must be a whole level, the last"),
    ("a+/b", "'+' must be a whole level"), ("a/\0", "NUL"),
])
def test_topic_filters(topic: str, problem: str | None) -> None:
    assert topic_filter_problem(topic) == problem


@pytest.mark.parametrize(("url", "problem"), [
    ("http://influx:8086", None), ("https://u:p@[::1]:8086/prefix", None), ("http://", "no host"),
    ("http://:8086", "no host"), ("http://a b", "a space in the URL"),
    ("http://h:99999", "Port out of range 0-65535"), ("http://[bad", "Invalid IPv6 URL"),
])
def test_url_problems(url: str, problem: str | None) -> None:
    assert url_problem(url) == problem
