"""The national registry (CONTRACT §10) with real codes: both eras, the 2025 conversion, narrowing to the
provinces served, CSV overrides over it, and the artefact being what its build step makes."""

from __future__ import annotations

import gzip
import tomllib
from datetime import date
from pathlib import Path

import pytest

from ioc.areas import REFORM_DAY, REFORM_NS, AreaRegistry, artefact_path, local_date, registry_from_settings
from ioc.areas import build as build_step
from ioc.config import AreasSettings
from ioc.errors import ConfigError

BEFORE = date(2024, 5, 1)
AFTER = date(2026, 3, 2)
HEADER = "code,name,level,parent,valid_from,valid_to\n"


@pytest.fixture(scope="module")
def country() -> AreaRegistry:
    return AreaRegistry.default()


def test_counts_of_both_eras(country: AreaRegistry) -> None:
    before, after = country.areas(BEFORE), country.areas(AFTER)
    assert sum(a.level == "province" for a in before) == 63
    assert sum(a.level == "district" for a in before) == 696
    assert sum(a.level == "commune" for a in before) == 10_035  # 5 island districts had no commune
    assert sum(a.level == "province" for a in after) == 34
    assert sum(a.level == "commune" for a in after) == 3_321
    assert not any(a.level == "district" for a in after)
    assert len(country.children("68", AFTER)) == 124  # Lâm Đồng


def test_a_reused_code_means_the_unit_of_the_events_era(country: AreaRegistry) -> None:
    ham_tien = country.get("22918", BEFORE)
    assert ham_tien is not None and ham_tien.name == "Phường Hàm Tiến"
    assert [a.code for a in country.ancestors("22918", BEFORE)] == ["593", "60"]  # Phan Thiết, Bình Thuận
    mui_ne = country.get("22918", AFTER)
    assert mui_ne is not None and mui_ne.name == "Phường Mũi Né" and mui_ne.parent == "68"
    assert mui_ne.lat is not None and 10 < mui_ne.lat < 12 and mui_ne.lon is not None and 107 < mui_ne.lon < 109
    # in use in both eras: never converted
    assert country.convert("22918", AFTER) is None and "22918" not in country.former


def test_a_former_commune_code_no_longer_in_use_converts_to_its_new_commune(country: AreaRegistry) -> None:
    old = country.get("22915", BEFORE)
    assert old is not None and old.name == "Phường Mũi Né" and old.parent == "593"
    assert country.get("22915", AFTER) is None
    moved = country.convert("22915", AFTER)
    assert moved is not None and moved.level == "commune" and moved.into == (("22918", "Phường Mũi Né"),)
    assert country.is_within(moved.into[0][0], "68", AFTER)
    assert country.convert("22915", BEFORE) is None  # before the reform the code is its own unit
    assert country.convert("22915", REFORM_DAY) is not None
    assert local_date(REFORM_NS / 1e9) == REFORM_DAY and local_date(REFORM_NS / 1e9 - 1) < REFORM_DAY


def test_the_former_units_of_a_new_commune_and_province(country: AreaRegistry) -> None:
    assert [(a.code, a.name) for a in country.former_units("22918")] == [
        ("22915", "Phường Mũi Né"), ("22918", "Phường Hàm Tiến"), ("22957", "Xã Thiện Nghiệp")]
    assert [(a.code, a.name) for a in country.former_units("68")] == [
        ("60", "Tỉnh Bình Thuận"), ("67", "Tỉnh Đắk Nông"), ("68", "Tỉnh Lâm Đồng")]
    assert [(a.code, a.level) for a in country.former_units("11948")] == [("318", "district")]  # Bạch Long Vĩ


def test_former_district_and_province_codes_convert_to_the_new_province(country: AreaRegistry) -> None:
    phan_thiet = country.convert("593", AFTER)
    assert phan_thiet is not None and phan_thiet.level == "district" and phan_thiet.into == (("68", "Tỉnh Lâm Đồng"),)
    binh_thuan = country.convert("60", AFTER)
    assert binh_thuan is not None and binh_thuan.level == "province" and binh_thuan.into[0][0] == "68"
    # an island district that had no commune became a special zone (a commune-level unit)
    bach_long_vi = country.convert("318", AFTER)
    assert bach_long_vi is not None and bach_long_vi.into == (("11948", "Đặc khu Bạch Long Vĩ"),)
    assert country.convert("68", AFTER) is None  # Lâm Đồng kept its code: in use, not converted


def test_a_divided_commune_names_its_candidates(country: AreaRegistry) -> None:
    cong_vi = country.convert("00007", AFTER)  # Phường Cống Vị, Ba Đình, Hà Nội
    assert cong_vi is not None and cong_vi.divided
    assert cong_vi.into == (("00008", "Phường Ngọc Hà"), ("00025", "Phường Giảng Võ"))
    assert cong_vi.reason() == ("area: 00007 (Phường Cống Vị) is a former commune divided on 2025-07-01 between "
                                "00008 (Phường Ngọc Hà), 00025 (Phường Giảng Võ); send the new commune's code")
    # a divided commune whose code one of its new communes kept (Phường Ngọc Khánh, 00025) is that one
    assert country.convert("00025", AFTER) is None
    assert country.get("00025", AFTER).name == "Phường Giảng Võ"  # type: ignore[union-attr]


def test_narrowed_to_one_province_includes_its_former_provinces() -> None:
    lam_dong = registry_from_settings(AreasSettings(provinces=["68"]))
    assert [a.code for a in lam_dong.areas(AFTER) if a.level == "province"] == ["68"]
    assert sorted(a.code for a in lam_dong.areas(BEFORE) if a.level == "province") == ["60", "67", "68"]
    assert sum(a.level == "commune" for a in lam_dong.areas(AFTER)) == 124
    assert lam_dong.get("00007", AFTER) is None and lam_dong.convert("00007", AFTER) is None
    assert lam_dong.convert("22915", AFTER) is not None and lam_dong.served == ("68",)
    assert lam_dong.get("22945", BEFORE).parent == "593"  # type: ignore[union-attr]


def test_an_unknown_or_former_province_in_provinces_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        registry_from_settings(AreasSettings(provinces=["60", "99"]))
    assert caught.value.problems[0].startswith(
        "areas.provinces: '60' is not one of the 34 provinces (60 is a former province, part of 68 from "
        "2025-07-01); one of 01, 04,")
    assert caught.value.problems[1].startswith("areas.provinces: '99' is not one of the 34 provinces; one of")


def test_a_csv_row_replaces_the_unit_for_the_dates_it_covers(tmp_path: Path) -> None:
    path = tmp_path / "areas.csv"
    path.write_text(HEADER + "22918,Phường Mũi Né (thử),commune,68,2026-01-01,2026-02-01\n"
                    "9000001,Khu kinh tế thử,commune,68,2025-07-01,\n", encoding="utf-8")
    registry = registry_from_settings(AreasSettings(provinces=["68"], path=str(path)))
    assert registry.get("22918", date(2025, 12, 31)).name == "Phường Mũi Né"  # type: ignore[union-attr]
    assert registry.get("22918", date(2026, 1, 15)).name == "Phường Mũi Né (thử)"  # type: ignore[union-attr]
    assert registry.get("22918", date(2026, 2, 1)).name == "Phường Mũi Né"  # type: ignore[union-attr]
    assert registry.get("22918", BEFORE).name == "Phường Hàm Tiến"  # type: ignore[union-attr]
    assert registry.is_within("9000001", "68", AFTER)


def test_a_csv_override_is_checked_against_the_national_registry(tmp_path: Path) -> None:
    path = tmp_path / "areas.csv"
    path.write_text(HEADER + "9000001,X,commune,593,2025-07-01,\n9000002,Y,province,22945,,\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        registry_from_settings(AreasSettings(path=str(path)))
    assert caught.value.problems == [
        f"{path}:2: parent '593' is not valid over this row's dates (2025-07-01 to open)",
        (f"{path}:3: level 'province' is not below the level 'commune' of its parent '22945' "
         "(the national registry)")]


def test_the_artefact_is_what_the_build_step_makes_from_the_pinned_package() -> None:
    registry = build_step.build_registry()  # fails if the pinned version is not the one installed
    assert gzip.decompress(artefact_path().read_bytes()) == build_step.render(registry)
    assert build_step.compress(build_step.render(registry)) == build_step.compress(build_step.render(registry))
    assert registry["source"] == {**registry["source"], "package": "vietnamadminunits", "version": "1.0.4"}


def test_the_pin_is_the_one_pyproject_installs() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["optional-dependencies"]["areas-build"] == [
        f"{build_step.PACKAGE}=={build_step.VERSION}"]


def test_source_is_recorded(country: AreaRegistry) -> None:
    assert country.source is not None
    assert (country.source.package, country.source.version, country.source.license) == (
        "vietnamadminunits", "1.0.4", "MIT")


def test_unknown_codes_are_not_cached(country: AreaRegistry) -> None:
    before = [len(entries) for entries in country._entries]
    for number in range(1000):
        assert country.level_of(f"X{number}", AFTER) is None and not country.is_within(f"X{number}", "68", AFTER)
    assert [len(entries) for entries in country._entries] == before
