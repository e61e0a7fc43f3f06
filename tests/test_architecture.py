"""The daemon's layers, held: no import cycle, no import upwards (issue 10; README "Layout").

    base (envelope, config and the components' settings, errors, metrics, store, areas, matchers, ...)
      <- ingest
      <- sinks / aggregators / rules / connectors / evaluation
      <- alerts
      <- cap (a publisher of alerts)
      <- api
      <- app, cli, demo

A module may import its own layer's base modules and any lower layer; siblings of one layer stay apart
except where listed in ALLOWED. The simulators are a vendor's worked example: they speak only the public
contract (topics, envelope, HTTP API), so they import nothing of the daemon, and only the commands import
them. Every import counts, including those inside functions (a lazy import hides a cycle; it does not
remove it); imports under `if TYPE_CHECKING:` do not, since they never run.

Also held here: no class over CLASS_LINES_MAX lines (issue 10: each class fits on a screen or two).

Run it alone: `python -m pytest tests/test_architecture.py`.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The import name of each folder (pyproject.toml's package-dir).
FOLDERS = {"ioc": ROOT / "ioc", "ioc.rules": ROOT / "rules", "ioc.connectors": ROOT / "connectors",
           "ioc.simulators": ROOT / "simulators"}

# Lowest first. A name stands for the module and everything under it.
LAYERS: list[tuple[str, list[str]]] = [
    # The components' settings (ioc.alerts.config, ioc.cap.config) belong to the config: the loader
    # gathers them, so they build only on ioc.config_types and other base modules.
    ("base", ["ioc", "ioc.errors", "ioc.envelope", "ioc.config", "ioc.config_types", "ioc.alerts.config",
              "ioc.cap.config", "ioc.redact", "ioc.failpoints", "ioc.metrics", "ioc.regex", "ioc.matchers",
              "ioc.retry", "ioc.clock", "ioc.store", "ioc.logs", "ioc.lineproto", "ioc.areas", "ioc.data",
              "ioc.kpis", "ioc.ratelimit", "ioc.auth", "ioc.web", "ioc.mosquitto_acl", "ioc.cluster"]),
    ("ingest", ["ioc.ingest"]),
    ("stages", ["ioc.sinks", "ioc.aggregators", "ioc.rules", "ioc.connectors", "ioc.evaluation"]),
    ("alerts", ["ioc.alerts"]),
    ("cap", ["ioc.cap"]),
    ("api", ["ioc.api"]),
    ("commands", ["ioc.app", "ioc.cli", "ioc.demo", "ioc.embedded_broker"]),
]
# Sibling imports inside one layer that are part of the design.
ALLOWED: set[tuple[str, str]] = {
    # `ioc rules test` runs rule unit tests with the KPIs the aggregators would derive from their events.
    ("ioc.rules", "ioc.aggregators"),
}
SIMULATORS = "ioc.simulators"
CLASS_LINES_MAX = 300  # from `class` to its last line, docstring and comments included
SIMULATOR_USERS = {"ioc.cli", "ioc.demo"}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if package == "ioc" and parts and parts[0] in ("rules", "connectors", "simulators"):
                continue  # a checkout with the folders linked inside ioc/: counted once, by their own name
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """module -> the daemon's modules it imports (a `from P import x` of a submodule x is an edge to P.x)."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    here = here[:len(here) - (node.level - 1)]
                    base = ".".join([*here, *([node.module] if node.module else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names]
            for target in targets:
                if target.split(".")[0] != "ioc":
                    continue
                resolved = resolve(target)
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the layer entry it falls under): the longest matching name wins."""
    best: tuple[int, int, str] | None = None
    for index, (_, names) in enumerate(LAYERS):
        for entry in names:
            # `ioc` itself stands for its __init__ only: a new module must be placed in a layer by name.
            within = module == entry or (entry != "ioc" and module.startswith(entry + "."))
            if within and (best is None or len(entry) > best[1]):
                best = (index, len(entry), entry)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py")
    return best[0], best[2]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(set(graph) | {m for targets in graph.values() for m in targets}):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_there_is_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_no_module_imports_a_higher_layer_or_a_sibling() -> None:
    wrong = []
    for module, targets in sorted(import_graph().items()):
        if module.startswith(SIMULATORS):
            continue
        layer, entry = layer_of(module)
        for target in sorted(targets):
            if target.startswith(SIMULATORS):
                continue
            target_layer, target_entry = layer_of(target)
            upwards = target_layer > layer
            sibling = (target_layer == layer and target_entry != entry
                       and LAYERS[layer][0] not in ("base", "commands") and (entry, target_entry) not in ALLOWED)
            if upwards or sibling:
                wrong.append(f"{module} ({LAYERS[layer][0]}) imports {target} ({LAYERS[target_layer][0]})")
    assert wrong == []


def test_the_simulators_speak_only_the_public_contract() -> None:
    graph = import_graph()
    inside = [f"{module} imports {target}" for module, targets in sorted(graph.items())
              if module.startswith(SIMULATORS) for target in sorted(targets) if not target.startswith(SIMULATORS)]
    users = sorted(module for module, targets in graph.items() if not module.startswith(SIMULATORS)
                   and any(target.startswith(SIMULATORS) for target in targets))
    assert inside == []
    assert set(users) <= SIMULATOR_USERS, users


def test_every_package_folder_is_installed() -> None:
    """pyproject lists packages by hand (setuptools does not discover the mapped folders): none forgotten."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = modules()
    packages = {name for name, path in found.items() if path.name == "__init__.py"}
    assert packages <= listed, f"not installed: {sorted(packages - listed)}"
    for name in listed - packages:  # data folders (rule packs, the CAP schema): no code, only files to ship
        parent, _, last = name.rpartition(".")
        folder = found[parent].parent / last
        assert folder.is_dir() and not any(folder.glob("*.py")), f"{name}: not a data folder"


def long_classes(source: str, where: str) -> list[str]:
    return [f"{where}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)
            and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > CLASS_LINES_MAX]


def test_no_class_is_longer_than_a_screen_or_two() -> None:
    found = [line for module, path in sorted(modules().items())
             for line in long_classes(path.read_text(encoding="utf-8"), module)]
    assert found == []


def test_the_class_length_check_sees_a_long_class() -> None:
    body = "\n".join(f"    x{n} = {n}" for n in range(CLASS_LINES_MAX))
    assert long_classes(f"class Long:\n{body}\n", "m") == [f"m:1 Long: {CLASS_LINES_MAX + 1} lines"]
    assert long_classes("class Short:\n    pass\n", "m") == []


def test_the_checker_sees_a_cycle_and_an_upward_import() -> None:
    """The checks above can fail: a made-up graph with a cycle and an upward edge."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("ioc.alerts.manager")[0] > layer_of("ioc.ingest.pipeline")[0]
    assert layer_of("ioc.rules.engine") == (2, "ioc.rules")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("ioc.somewhere_new")
