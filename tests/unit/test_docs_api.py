"""docs/http-api.md names every route the daemon serves in its OpenAPI document, as `METHOD /path`.

Routes are read from the source: each `router.get(...)`, `.post`, `.put`, `.delete`, `.patch` decorator of
the daemon's modules, its path evaluated in its module (paths may be constants such as `STREAM_PATH`).
Routers and routes kept out of the OpenAPI document (`include_in_schema=False`: assets) are left out.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "http-api.md"
METHODS = ("get", "post", "put", "delete", "patch")


def _hidden(node: ast.Call) -> bool:
    return any(keyword.arg == "include_in_schema" and isinstance(keyword.value, ast.Constant)
               and keyword.value.value is False for keyword in node.keywords)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts) if parts[0] == "ioc" else "ioc." + ".".join(parts)


def served() -> set[str]:
    """`METHOD /path` of every route in the schema, path parameters written `{}`."""
    found: set[str] = set()
    for path in sorted((ROOT / "ioc").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "@router." not in text:
            continue
        tree = ast.parse(text)
        if any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "APIRouter" and _hidden(node)
               for node in ast.walk(tree)):
            continue  # a router kept out of the schema as a whole
        module = importlib.import_module(_module_name(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in node.decorator_list:
                if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
                        and decorator.func.attr in METHODS and decorator.args and not _hidden(decorator)):
                    continue
                route = eval(compile(ast.Expression(decorator.args[0]), str(path), "eval"), vars(module))
                found.add(f"{decorator.func.attr.upper()} {re.sub(r'{[^}]*}', '{}', route)}")
    return found


def documented() -> str:
    return re.sub(r"{[^}]*}", "{}", REFERENCE.read_text(encoding="utf-8"))


def test_the_source_scan_finds_the_routes() -> None:
    routes = served()
    assert {"POST /api/v1/events", "GET /api/v1/alerts/{}", "DELETE /api/v1/silences/{}", "GET /api/v1/stream",
            "GET /healthz"} <= routes


def test_every_route_is_documented() -> None:
    text = documented()
    missing = sorted(route for route in served() if f"`{route}`" not in text and f"`{route}?" not in text
                     and f"`{route}[" not in text)
    assert not missing, f"routes docs/http-api.md does not name as `METHOD /path`: {missing}"
