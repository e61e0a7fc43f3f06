"""The area registry: the shipped data at both structures, lookups by date, and every bad-file case."""

from __future__ import annotations

import unicodedata
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from ioc.areas import (
    AreaRegistry,
    default_targets_path,
    local_date,
    registry_from_settings,
)
from ioc.config import AreasSettings
from ioc.errors import ConfigError

BEFORE = date(2025, 6, 30)
AFTER = date(2026, 3, 2)
HEADER = "code,name,level,parent,valid_from,valid_to\n"


def problems(tmp_path: Path, areas: str, targets: str | None = None) -> list[str]:
    areas_path = tmp_path / "areas.csv"
    areas_path.write_text(areas, encoding="utf-8")
    targets_path = None
    if targets is not None:
        targets_path = tmp_path / "targets.csv"
        targets_path.write_text(targets, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        AreaRegistry.load(areas_path, targets_path)
    return caught.value.problems


def test_shipped_registry_has_three_levels_before_the_reform() -> None:
    registry = AreaRegistry.default()
    lac_dao = registry.get("22945", BEFORE)
    assert lac_dao is not None and lac_dao.name == "Phường Lạc Đạo" and lac_dao.level == "commune"
    assert [a.code for a in registry.ancestors("22945", BEFORE)] == ["593", "60"]
    assert registry.level_of("593", BEFORE) == "district"
    assert registry.is_within("22945", "593", BEFORE) and registry.is_within("22945", "60", BEFORE)
    assert not registry.is_within("22945", "594", BEFORE)
    districts = registry.children("60", BEFORE)
    assert [a.code for a in districts] == [str(code) for code in range(593, 603)]
    assert {a.name for a in districts} >= {"Thành phố Phan Thiết", "Thị xã La Gi", "Huyện Phú Quí",
                                             "Huyện Hàm Thuận Bắc", "Huyện Đức Linh", "Huyện Tánh Linh"}
    assert len(registry.children("593", BEFORE)) == 15  # Phan Thiết's wards and communes


def test_shipped_registry_has_two_levels_after_the_reform() -> None:
    registry = AreaRegistry.default()
    area = registry.get("22945", AFTER)
    assert area is not None and area.name == "Phường Phan Thiết" and area.parent == "68"
    assert [a.code for a in registry.ancestors("22945", AFTER)] == ["68"]
    assert registry.get("593", AFTER) is None and registry.level_of("593", AFTER) is None
    assert registry.get("60", AFTER) is None  # Bình Thuận is part of Lâm Đồng from 2025-07-01
    assert not registry.is_within("22945", "593", AFTER)
    assert {a.level for a in registry.areas(AFTER)} == {"province", "commune"}
    assert len(registry.children("68", AFTER)) == 124
    # the boundary: valid_to is exclusive
    assert registry.get("593", date(2025, 7, 1)) is None
    assert registry.get("593", date(2025, 6, 30)) is not None


def test_shipped_targets_by_level_and_date() -> None:
    registry = AreaRegistry.default()
    assert registry.target("kpi.dossier.online_share", "province", AFTER) == 90
    assert registry.target("kpi.dossier.online_share", "district", BEFORE) == 80
    assert registry.target("kpi.dossier.online_share", "district", AFTER) is None
    assert registry.target("kpi.dossier.online_share", "commune", AFTER) == 60
    assert registry.target("kpi.coverage.down_share", "commune", AFTER) == 0
    assert registry.target("kpi.dossier.on_time_rate", "province", AFTER) == 95
    assert registry.target("kpi.nothing", "province", AFTER) is None


def test_shipped_names_are_nfc() -> None:
    assert unicodedata.is_normalized("NFC", default_targets_path().read_text(encoding="utf-8"))
    for area in AreaRegistry.default().versions():
        assert unicodedata.is_normalized("NFC", area.name), area


def test_decomposed_names_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "areas.csv"
    path.write_text(HEADER + unicodedata.normalize("NFD", "60,Tỉnh Bình Thuận,province,,,\n"))
    assert AreaRegistry.load(path).get("60", AFTER).name == "Tỉnh Bình Thuận"  # type: ignore[union-attr]


def test_only_the_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "areas.csv"
    path.write_text("code,name,level,parent\n60,P,province,\n1,C,commune,60\n")
    registry = AreaRegistry.load(path)
    assert registry.is_within("1", "60", AFTER) and registry.target("x", "province") is None


def test_unknown_code_and_same_code() -> None:
    registry = AreaRegistry.default()
    assert registry.get("99999", AFTER) is None and registry.ancestors("99999", AFTER) == []
    assert registry.is_within("99999", "99999", AFTER)
    assert not registry.is_within("99999", "68", AFTER)


def test_local_date_is_vietnam_time() -> None:
    # 17:30 UTC on 2026-03-01 is 00:30 on 2026-03-02 in Hanoi
    assert local_date(datetime(2026, 3, 1, 17, 30, tzinfo=UTC).timestamp()) == date(2026, 3, 2)
    assert local_date(datetime(2026, 3, 1, 16, 59, tzinfo=UTC).timestamp()) == date(2026, 3, 1)
    assert local_date(datetime(1970, 6, 1, 12, 0, tzinfo=UTC).timestamp()) == date(1970, 6, 1)


@pytest.mark.parametrize(("body", "expected"), [
    ("60,P,province,,,\n1,C,commune,77,,\n", "3: parent '77' is not a known area"),
    ("60,P,province,,,2025-07-01\n1,C,commune,60,,\n",
     "3: parent '60' is not valid over this row's dates (the start to open)"),
    ("60,P,province,,,\n60,Q,province,,2025-01-01,\n",
     "3: code '60' is already defined at line 2 for overlapping dates"),
    ("60,P,town,,,\n", "2: level: 'town' is not one of province, district, commune"),
    ("60,P,province,,,\n1,C,commune,60,,\n2,D,district,1,,\n",
     "4: level 'district' is not below the level 'commune' of its parent '1' (line 3)"),
    ("60,P,province,,,\n1,C,commune,60,2025-13-01,\n",
     "3: valid_from: '2025-13-01' is not a date (YYYY-MM-DD)"),
    ("60,P,province,,2025-07-01,2025-07-01\n",
     "2: valid_to 2025-07-01 must be after valid_from 2025-07-01"),
    ("60,P,province,,,\n1,C,commune,60,,,extra\n",
     "3: expected 6 fields (code, name, level, parent, valid_from, valid_to), got 7"),
    ("60,,province,,,\n", "2: name: empty"),
])
def test_bad_rows(tmp_path: Path, body: str, expected: str) -> None:
    assert problems(tmp_path, HEADER + body) == [f"{tmp_path / 'areas.csv'}:{expected}"]


def test_cycle_is_reported_once_at_its_first_row(tmp_path: Path) -> None:
    body = "# a comment line counts\n1,A,district,2,,\n2,B,district,1,,\n"
    assert problems(tmp_path, HEADER + body) == [f"{tmp_path / 'areas.csv'}:3: parent cycle: 1 -> 2 -> 1"]


def test_self_parent_is_a_cycle(tmp_path: Path) -> None:
    assert problems(tmp_path, HEADER + "1,A,province,1,,\n") == [
        f"{tmp_path / 'areas.csv'}:2: parent cycle: 1 -> 1"]


def test_missing_and_unknown_columns(tmp_path: Path) -> None:
    assert problems(tmp_path, "# header next\ncode,name,parent\n60,P,\n") == [
        f"{tmp_path / 'areas.csv'}:2: missing column 'level'"]
    assert problems(tmp_path, "code,name,level,parent,vaild_to\n") == [
        (f"{tmp_path / 'areas.csv'}:1: unknown column 'vaild_to' (expected code, name, level, parent, "
         "valid_from, valid_to)")]


def test_every_problem_is_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, HEADER + "60,P,nation,,,\n1,C,commune,60,,\n2,D,commune,9,,\n")
    label = tmp_path / "areas.csv"
    assert found == [f"{label}:2: level: 'nation' is not one of province, district, commune",
                     f"{label}:3: parent '60' is not a known area",
                     f"{label}:4: parent '9' is not a known area"]


def test_not_utf8_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "areas.csv"
    path.write_bytes(HEADER.encode() + "60,Tỉnh Bình Thuận,province,,,\n".encode()
                     + b"1,B\xecnh,commune,60,,\n")
    with pytest.raises(ConfigError) as caught:
        AreaRegistry.load(path)
    assert caught.value.problems[0].startswith(f"{path}:3: not UTF-8")
    with pytest.raises(ConfigError) as caught:
        AreaRegistry.load(tmp_path / "none.csv")
    assert caught.value.problems == [f"{tmp_path / 'none.csv'}: cannot read: No such file or directory"]


@pytest.mark.parametrize(("body", "expected"), [
    ("kpi.x,province,abc,,\n", "2: target: 'abc' is not a finite number"),
    ("kpi.x,province,nan,,\n", "2: target: 'nan' is not a finite number"),
    ("Kpi X,province,1,,\n", "2: kpi: 'Kpi X' is not a metric name such as 'kpi.dossier.online_share'"),
    ("kpi.x,ward,1,,\n", "2: level: 'ward' is not one of province, district, commune"),
    ("kpi.x,province,1,,\nkpi.x,province,2,2025-01-01,\n",
     "3: target of 'kpi.x' for 'province' is already set at line 2 for overlapping dates"),
    ("kpi.x,province,1,2025-02-30,\n", "2: valid_from: '2025-02-30' is not a date (YYYY-MM-DD)"),
])
def test_bad_targets(tmp_path: Path, body: str, expected: str) -> None:
    found = problems(tmp_path, HEADER + "60,P,province,,,\n", "kpi,level,target,valid_from,valid_to\n" + body)
    assert found == [f"{tmp_path / 'targets.csv'}:{expected}"]


def test_versioned_targets(tmp_path: Path) -> None:
    areas = tmp_path / "areas.csv"
    areas.write_text(HEADER + "60,P,province,,,\n")
    targets = tmp_path / "targets.csv"
    targets.write_text("kpi,level,target,valid_from,valid_to\nkpi.x,province,50,,2026-01-01\n"
                       "kpi.x,province,70,2026-01-01,\n")
    registry = AreaRegistry.load(areas, targets)
    assert registry.target("kpi.x", "province", date(2025, 12, 31)) == 50
    assert registry.target("kpi.x", "province", date(2026, 1, 1)) == 70


def test_renamed_parent_over_two_rows_covers_the_child(tmp_path: Path) -> None:
    body = "60,Old,province,,,2025-07-01\n60,New,province,,2025-07-01,\n1,C,commune,60,,\n"
    path = tmp_path / "areas.csv"
    path.write_text(HEADER + body)
    registry = AreaRegistry.load(path)
    assert [a.name for a in registry.ancestors("1", BEFORE)] == ["Old"]
    assert [a.name for a in registry.ancestors("1", AFTER)] == ["New"]


def test_a_long_cycle_is_reported_not_crashed_on(tmp_path: Path) -> None:
    rows = "".join(f"{n},A{n},district,{(n + 1) % 5000},,\n" for n in range(5000))
    assert problems(tmp_path, HEADER + rows) == [
        f"{tmp_path / 'areas.csv'}:2: parent cycle: 0 -> 1 -> 2 -> 3 -> ... -> 0 (5000 areas)"]


def test_registry_from_settings(tmp_path: Path) -> None:
    assert registry_from_settings(AreasSettings()) is AreaRegistry.default()
    path = tmp_path / "areas.csv"
    path.write_text(HEADER + "9000001,Khu thử nghiệm,commune,68,2026-01-01,\n")
    registry = registry_from_settings(AreasSettings(path=str(path)))
    # the CSV adds to the national registry
    assert registry.get("9000001", AFTER) is not None and registry.get("22945", AFTER) is not None
    assert registry.get("9000001", date(2025, 12, 31)) is None
    assert registry.target("kpi.dossier.online_share", "province", AFTER) == 90  # the shipped targets
    with pytest.raises(ConfigError):
        registry_from_settings(AreasSettings(path=str(tmp_path / "missing.csv")))
