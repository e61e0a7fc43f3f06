"""`ioc areas info|show|convert` (CONTRACT §10) on real codes."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ioc.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["areas", *args])
    return result.exit_code, result.stdout, result.stderr


def test_info_names_the_data_package_and_counts_both_eras() -> None:
    code, out, _ = run("info")
    assert code == 0
    assert "vietnamadminunits 1.0.4 (MIT)" in out
    assert "until 2025-06-30:      63 provinces, 696 districts, 10035 communes" in out
    assert "from 2025-07-01:       34 provinces, 3321 communes" in out


def test_info_of_a_narrowed_config(tmp_path: Path) -> None:
    config = tmp_path / "ioc.toml"
    config.write_text('[areas]\nprovinces = ["68"]\n', encoding="utf-8")
    code, out, _ = run("info", "--config", str(config))
    assert code == 0 and "served:    68" in out
    assert "until 2025-06-30:      3 provinces" in out and "from 2025-07-01:       1 province, 124 communes" in out


def test_show_a_new_commune_with_its_former_units() -> None:
    code, out, _ = run("show", "22918", "--at", "2026-03-02")
    assert code == 0
    assert out.splitlines()[0] == "22918 Phường Mũi Né (commune)"
    assert "within:      68 Tỉnh Lâm Đồng (province)" in out
    assert "22915 Phường Mũi Né, Thành phố Phan Thiết, Tỉnh Bình Thuận" in out
    assert "22918 Phường Hàm Tiến, Thành phố Phan Thiết, Tỉnh Bình Thuận" in out
    assert "... to 2025-06-30: Phường Hàm Tiến (commune, in 593)" in out


def test_show_the_same_code_before_the_reform() -> None:
    code, out, _ = run("show", "22918", "--at", "2024-05-01")
    assert code == 0 and out.splitlines()[0] == "22918 Phường Hàm Tiến (commune)"
    assert "593 Thành phố Phan Thiết (district) < 60 Tỉnh Bình Thuận (province)" in out


def test_show_an_unknown_code_and_a_bad_date() -> None:
    assert run("show", "99999")[0] == 1
    code, _, err = run("show", "22918", "--at", "2026-13-01")
    assert code == 2 and "--at: '2026-13-01' is not a date" in err


def test_convert_a_former_commune_district_and_province() -> None:
    assert run("convert", "22915", "--at", "2026-03-02")[1].strip() == (
        "22915 Phường Mũi Né (commune until 2025-06-30) -> 22918 Phường Mũi Né in 68 Tỉnh Lâm Đồng")
    assert run("convert", "593", "--at", "2026-03-02")[1].strip() == (
        "593 Thành phố Phan Thiết (district until 2025-06-30) -> 68 Tỉnh Lâm Đồng")
    assert run("convert", "60", "--at", "2026-03-02")[1].strip() == (
        "60 Tỉnh Bình Thuận (province until 2025-06-30) -> 68 Tỉnh Lâm Đồng")


def test_convert_keeps_a_code_in_use_in_the_events_era() -> None:
    code, out, _ = run("convert", "22915", "--at", "2025-06-30")
    assert code == 0 and out.strip() == "22915: in use on 2025-06-30: Phường Mũi Né (commune); kept as it is"


def test_convert_refuses_a_divided_commune_naming_the_candidates() -> None:
    code, _, err = run("convert", "00007", "--at", "2026-03-02")
    assert code == 1
    assert "00008 (Phường Ngọc Hà), 00025 (Phường Giảng Võ)" in err
