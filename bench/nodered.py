"""Node-RED as a live-bench consumer: installed from npm into a cache folder, one flow
mqtt in (QoS 1) -> json -> function (event -> InfluxDB point) -> join (1000 or 1 s) -> influxdb batch.

`node-red` 5 needs node >= 22.9; Debian's node 20 runs the 4.x line, so the bench installs `node-red@4`
(the newest release node 20 can run) and `node-red-contrib-influxdb` (its `influxdb batch` node writes
an array of points in one /write). The join node batches like the daemon and the paho baseline do
(1000 points or 1 s). Node-RED's MQTT client (MQTT.js) acknowledges a QoS 1 message when it arrives,
before the flow has written it: it promises less than the other two consumers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("IOC_BENCH_CACHE", Path.home() / ".cache" / "ioc-bench")) / "node-red"
PACKAGES = ["node-red@4", "node-red-contrib-influxdb@0.7"]

# The event's time (RFC 3339, 6 fraction digits, as the bench writes it) to µs, kept exact: a JS Date
# has only ms, and points of one series within a ms would overwrite each other in InfluxDB.
FUNCTION = """
const e = msg.payload;
const t = e.time;
const tags = Object.assign({source: e.source, area: e.area}, e.tags);
msg.payload = {measurement: e.metric, tags: tags, fields: {value: e.value},
               timestamp: String(Math.floor(Date.parse(t) / 1000)) + t.substr(20, 6)};
return msg;
"""


def install() -> Path:
    """Install Node-RED and the InfluxDB nodes once into the cache; returns node-red's red.js."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for the Node-RED consumer "
                           "(Debian: apt-get install nodejs npm)")
    red = CACHE / "node_modules" / "node-red" / "red.js"
    influx = CACHE / "node_modules" / "node-red-contrib-influxdb" / "influxdb.js"
    if not (red.exists() and influx.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / "package.json").write_text('{"name": "ioc-bench-node-red", "private": true}\n')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev", *PACKAGES], cwd=CACHE,
                       check=True, stdout=subprocess.DEVNULL)
    return red


def version() -> str:
    package = CACHE / "node_modules" / "node-red" / "package.json"
    return json.loads(package.read_text())["version"] if package.exists() else "?"


def write_flow(user_dir: Path, *, http_port: int, mqtt_port: int, influx_port: int, database: str) -> Path:
    """The user folder with settings.js, flows.json and plain (unencrypted, empty) credentials."""
    user_dir.mkdir(parents=True, exist_ok=True)
    flow = [
        {"id": "bench", "type": "tab", "label": "ioc bench"},
        {"id": "broker", "type": "mqtt-broker", "name": "mosquitto", "broker": "127.0.0.1",
         "port": str(mqtt_port), "clientid": "", "autoConnect": True, "usetls": False, "protocolVersion": "4",
         "keepalive": "60",
         "cleansession": True, "birthTopic": "", "closeTopic": "", "willTopic": ""},
        {"id": "influx", "type": "influxdb", "hostname": "127.0.0.1", "port": str(influx_port),
         "protocol": "http", "database": database, "name": "influxdb", "usetls": False,
         "influxdbVersion": "1.x"},
        {"id": "in", "type": "mqtt in", "z": "bench", "name": "events", "topic": "ioc/v1/events/+",
         "qos": "1", "datatype": "utf8", "broker": "broker", "nl": False, "rap": True, "rh": 0, "inputs": 0,
         "x": 100, "y": 100, "wires": [["json"]]},
        {"id": "json", "type": "json", "z": "bench", "name": "", "property": "payload", "action": "obj",
         "pretty": False, "x": 250, "y": 100, "wires": [["point"]]},
        {"id": "point", "type": "function", "z": "bench", "name": "event -> point", "func": FUNCTION,
         "outputs": 1, "x": 400, "y": 100, "wires": [["join"]]},
        {"id": "join", "type": "join", "z": "bench", "name": "1000 or 1 s", "mode": "custom",
         "build": "array", "property": "payload", "propertyType": "msg", "key": "topic", "joiner": "\\n",
         "joinerType": "str",
         "accumulate": False, "timeout": "1", "count": "1000", "reduceRight": False,
         "x": 550, "y": 100, "wires": [["out"]]},
        {"id": "out", "type": "influxdb batch", "z": "bench", "influxdb": "influx", "precision": "u",
         "retentionPolicy": "", "name": "write", "x": 700, "y": 100, "wires": []},
    ]
    (user_dir / "flows.json").write_text(json.dumps(flow, indent=1))
    (user_dir / "flows_cred.json").write_text(json.dumps({"influx": {"username": "", "password": ""}}))
    (user_dir / "settings.js").write_text(f"""module.exports = {{
    uiHost: "127.0.0.1",
    uiPort: {http_port},
    flowFile: "flows.json",
    credentialSecret: false,
    disableEditor: true,
    httpAdminRoot: false,
    logging: {{ console: {{ level: "warn", metrics: false, audit: false }} }},
    editorTheme: {{ tours: false }},
}};
""")
    return user_dir / "settings.js"


def start(red: Path, user_dir: Path, settings: Path, log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["node", str(red), "--userDir", str(user_dir), "--settings", str(settings)],
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
