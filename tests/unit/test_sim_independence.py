"""The simulators are a vendor's worked example (issue 10): they import nothing of the daemon, and what
they know of it (area codes, holidays) matches the daemon's public contract."""

from __future__ import annotations

import ast
import subprocess
import sys
from datetime import date
from pathlib import Path

import ioc.simulators
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ioc.simulators.areas import AreaList
from ioc.simulators.scenario import SCENARIO_DIR
from ioc.simulators.subsystems.base import default_holidays

from ioc.aggregators.calendar import default_holidays_path, load_holidays
from ioc.api.areas_api import areas_router
from ioc.areas import AreaRegistry

PACKAGE = Path(ioc.simulators.__file__).resolve().parent


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_module_of_the_simulators_imports_the_daemon() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    offending = {str(path.relative_to(PACKAGE)): sorted(name for name in imported_names(path)
                                                        if (name == "ioc" or name.startswith("ioc."))
                                                        and not name.startswith("ioc.simulators"))
                 for path in files}
    assert not {path: names for path, names in offending.items() if names}


def test_importing_every_simulator_module_loads_no_daemon_module() -> None:
    modules = [".".join(("ioc.simulators", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
               for path in sorted(PACKAGE.rglob("*.py"))]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('ioc.') and not m.startswith('ioc.simulators')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"  # only the namespace `ioc` itself (its __init__ imports nothing)


def test_the_shipped_areas_file_is_what_the_daemons_api_answers() -> None:
    app = FastAPI()
    app.include_router(areas_router(AreaRegistry.national(["68"])))
    shipped = AreaList.from_csv(SCENARIO_DIR / "lam-dong.csv")
    for day in (date(2025, 7, 1), date(2026, 3, 2)):
        fetched = AreaList.from_api("http://testserver", "68", day, client=TestClient(app))
        assert shipped.areas(day) == fetched.areas(day)
    communes = shipped.communes("68", date(2026, 3, 2))
    focus = shipped.communes("68", date(2026, 3, 2), former="60")
    assert len(communes) == 124 and len(focus) == 45  # Lâm Đồng; the former Bình Thuận inside it
    assert {"22945", "22954", "22918"} <= {area.code for area in focus}
    assert shipped.communes("68", date(2025, 6, 30)) == []  # the file holds the units from 2025-07-01


def test_the_simulators_holidays_are_the_daemons() -> None:
    assert default_holidays() == load_holidays(default_holidays_path())
