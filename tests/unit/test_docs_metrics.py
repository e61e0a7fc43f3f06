"""docs/metrics.md names every metric the daemon registers, with its type and labels, and nothing else.

The daemon's metrics are built at scrape time by `ioc.metrics.counter(...)` and `gauge(...)` calls with a
literal name, documentation and labels; they are read here from the source (every module of the daemon,
its connectors and rules), so a metric that only shows once a connector or a webhook runs is found too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "metrics.md"
PACKAGES = ("ioc", "connectors", "rules", "simulators")
# | `ioc_events_rejected_total` | counter | `source`, `reason` | meaning |
ROW = re.compile(r"^\| `(ioc_[a-z0-9_]+)` \| (counter|gauge) \|([^|]*)\|")


def _tuples(tree: ast.Module) -> dict[str, tuple[str, ...]]:
    """Names bound to a literal tuple of strings anywhere in a module (`label = ("alertmanager",)`)."""
    found: dict[str, tuple[str, ...]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
                found.setdefault(node.targets[0].id, value)
    return found


def _labels(node: ast.expr, constants: dict[str, tuple[str, ...]], path: Path) -> tuple[str, ...]:
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    try:
        return tuple(ast.literal_eval(node))
    except ValueError:
        raise AssertionError(f"{path}:{node.lineno}: give a metric's labels as a literal tuple "
                             "(or a name bound to one) so that docs/metrics.md can be checked") from None


def registered() -> dict[str, tuple[str, frozenset[str]]]:
    """Every exposed metric name -> (type, labels), from the `counter`/`gauge` calls in the source."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            constants = _tuples(tree)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in ("counter", "gauge") and node.args
                        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                        and node.args[0].value.startswith("ioc_")):
                    continue
                # A counter family is exposed with `_total` (prometheus_client adds it).
                name = node.args[0].value + ("_total" if node.func.id == "counter" else "")
                labels = frozenset(_labels(node.args[2], constants, path)) if len(node.args) > 2 else frozenset()
                kind = (node.func.id, labels)
                assert found.setdefault(name, kind) == kind, f"{name} registered twice with different labels"
    return found


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        row = ROW.match(line)
        if row:
            name, kind, labels = row.groups()
            assert name not in found, f"{name} is documented twice"
            found[name] = (kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return found


def test_the_source_scan_finds_the_metrics() -> None:
    metrics = registered()
    assert len(metrics) > 50
    assert metrics["ioc_events_rejected_total"] == ("counter", frozenset({"source", "reason"}))


def test_every_metric_is_documented() -> None:
    missing = sorted(set(registered()) - set(documented()))
    assert not missing, f"metrics the daemon registers that docs/metrics.md does not list: {missing}"


def test_every_documented_metric_exists() -> None:
    unknown = sorted(set(documented()) - set(registered()))
    assert not unknown, f"metrics in docs/metrics.md that the daemon does not register: {unknown}"


def test_types_and_labels_are_the_registered_ones() -> None:
    wrong = {name: (documented()[name], kind) for name, kind in registered().items()
             if name in documented() and documented()[name] != kind}
    assert not wrong, f"(documented, registered) type and labels differ: {wrong}"
