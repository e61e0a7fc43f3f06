"""The build step of the national registry (CONTRACT §10): `python -m ioc.areas.build`.

Reads the data files of the pinned PyPI package **vietnamadminunits** (MIT) and writes the compact
artefact the daemon loads, `ioc/data/areas/vn-registry.json.gz`:

- former era (until 2025-06-30): 63 provinces, 696 districts, 10,035 communes (GSO codes, names,
  coordinates) from the package's `dataset.db` table `admin_units_legacy`;
- from 2025-07-01: 34 provinces and 3,321 communes from the table `admin_units`;
- the 2025 conversion from the package's `converter_2025.json`, which is keyed by name keys
  ("tinhbinhthuan_thanhphophanthiet_phuongmuine"); here it is turned into codes: each former commune
  -> the new commune(s) it went into (several when it was divided), each former province -> its new
  province, and each island district that had no commune -> the special zone it became.

The package is a build-step dependency only (`pip install -e '.[areas-build]'`): its data is 10 MB
(a 7 MB SQLite file) and importing it pulls geopy and shapely, while the artefact is ~0.3 MB and loads
in tens of milliseconds. Only the data files are read (found through the distribution's metadata, the
package's own code is never imported). The output is deterministic: sorted rows, sorted keys, a gzip
header without time or name, so a rerun on the same package gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
import sys
import unicodedata
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = "vietnamadminunits"
VERSION = "1.0.4"  # the pin; pyproject's `areas-build` extra says the same (a test holds them together)
LICENSE = "MIT"
REFORM_DAY = "2025-07-01"
ARTEFACT = Path(__file__).resolve().parent.parent / "data" / "areas" / "vn-registry.json.gz"
_DATA_FILES = ("data/dataset.db", "data/converter_2025.json")


class BuildError(RuntimeError):
    """The installed package is missing, of another version, or its data does not hold together."""


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text.strip())


def _coord(value: float | None) -> float | None:
    # 5 decimals is ~1 m: more than the package's own precision, and it keeps the artefact small.
    return None if value is None else round(float(value), 5)


def package_files() -> dict[str, Path]:
    """The package's data files on this machine; BuildError unless the pinned version is installed."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise BuildError(f"{PACKAGE} is not installed: pip install -e '.[areas-build]'") from None
    if dist.version != VERSION:
        raise BuildError(f"{PACKAGE} {dist.version} is installed, the registry is pinned to {VERSION}")
    found = {name: Path(str(dist.locate_file(f"{PACKAGE}/{name}"))) for name in _DATA_FILES}
    for name, path in found.items():
        if not path.is_file():
            raise BuildError(f"{PACKAGE} {VERSION}: {name} is missing at {path}")
    return found


def build_registry(files: dict[str, Path] | None = None) -> dict[str, Any]:
    """The registry as a JSON-ready dict (see the module's doc for what it holds)."""
    files = files or package_files()
    db = sqlite3.connect(f"file:{files['data/dataset.db']}?mode=ro", uri=True)
    try:
        legacy = db.execute(
            "SELECT provinceCode, province, provinceLat, provinceLon, districtCode, district, districtLat, "
            "districtLon, wardCode, ward, wardLat, wardLon, provinceKey, districtKey, wardKey "
            "FROM admin_units_legacy").fetchall()
        current = db.execute(
            "SELECT provinceCode, province, provinceLat, provinceLon, wardCode, ward, wardLat, wardLon, "
            "provinceKey, wardKey FROM admin_units").fetchall()
    finally:
        db.close()
    converter = json.loads(files["data/converter_2025.json"].read_text(encoding="utf-8"))

    provinces_old: dict[str, list[Any]] = {}
    districts: dict[str, list[Any]] = {}
    communes_old: dict[str, list[Any]] = {}
    old_key: dict[str, tuple[str, str]] = {}  # "province_district_ward" key -> (level, code)
    province_by_key: dict[str, str] = {}
    for (p_code, p_name, p_lat, p_lon, d_code, d_name, d_lat, d_lon, w_code, w_name, w_lat, w_lon,
         p_key, d_key, w_key) in legacy:
        provinces_old.setdefault(p_code, [p_code, _nfc(p_name), _coord(p_lat), _coord(p_lon)])
        districts.setdefault(d_code, [d_code, _nfc(d_name), p_code, _coord(d_lat), _coord(d_lon)])
        province_by_key[p_key] = p_code
        if w_code:
            if w_code in communes_old:
                raise BuildError(f"former commune code {w_code} appears twice")
            communes_old[w_code] = [w_code, _nfc(w_name), d_code, _coord(w_lat), _coord(w_lon)]
            old_key[f"{p_key}_{d_key}_{w_key}"] = ("commune", w_code)
        else:  # an island district without communes (Bạch Long Vĩ, Cồn Cỏ, Hoàng Sa, Lý Sơn, Côn Đảo)
            old_key[f"{p_key}_{d_key}_"] = ("district", d_code)

    provinces_new: dict[str, list[Any]] = {}
    communes_new: dict[str, list[Any]] = {}
    new_key: dict[tuple[str, str], str] = {}
    new_province_by_key: dict[str, str] = {}
    for p_code, p_name, p_lat, p_lon, w_code, w_name, w_lat, w_lon, p_key, w_key in current:
        provinces_new.setdefault(p_code, [p_code, _nfc(p_name), _coord(p_lat), _coord(p_lon)])
        if w_code in communes_new:
            raise BuildError(f"commune code {w_code} appears twice from {REFORM_DAY}")
        communes_new[w_code] = [w_code, _nfc(w_name), p_code, _coord(w_lat), _coord(w_lon)]
        new_key[(p_key, w_key)] = w_code
        new_province_by_key[p_key] = p_code

    province_to: dict[str, str] = {}
    for new_p_key, old_p_keys in converter["DICT_PROVINCE"].items():
        for old_p_key in old_p_keys:
            province_to[province_by_key[old_p_key]] = new_province_by_key[new_p_key]
    commune_to: dict[str, set[str]] = {}
    district_to: dict[str, str] = {}
    for section in ("DICT_PROVINCE_WARD_NO_DIVIDED", "DICT_PROVINCE_WARD_DIVIDED"):
        for new_p_key, table in converter[section].items():
            pairs: list[tuple[str, str]] = []  # (former key, new ward key)
            if section == "DICT_PROVINCE_WARD_NO_DIVIDED":
                pairs = [(old, new_w) for new_w, olds in table.items() for old in olds]
            else:
                pairs = [(old, choice["newWardKey"]) for old, choices in table.items() for choice in choices]
            for old, new_w in pairs:
                if old not in old_key or (new_p_key, new_w) not in new_key:
                    raise BuildError(f"{section}: {old} -> {new_p_key}/{new_w} names an unknown unit")
                level, code = old_key[old]
                target = new_key[(new_p_key, new_w)]
                if level == "district":
                    district_to[code] = target
                else:
                    commune_to.setdefault(code, set()).add(target)
    unconverted = sorted(set(communes_old) - set(commune_to))
    if unconverted or set(province_to) != set(provinces_old):
        raise BuildError(f"the conversion misses former units: {unconverted[:5]} ...")

    digest = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sorted(files.items())}
    return {
        "source": {"package": PACKAGE, "version": VERSION, "license": LICENSE, "sha256": digest},
        "reform_day": REFORM_DAY,
        # Rows: [code, name, (parent,) lat, lon], sorted by code.
        "former": {"provinces": [provinces_old[c] for c in sorted(provinces_old)],
                   "districts": [districts[c] for c in sorted(districts)],
                   "communes": [communes_old[c] for c in sorted(communes_old)]},
        "current": {"provinces": [provinces_new[c] for c in sorted(provinces_new)],
                    "communes": [communes_new[c] for c in sorted(communes_new)]},
        "conversion": {"provinces": dict(sorted(province_to.items())),
                       "districts": dict(sorted(district_to.items())),
                       "communes": {code: sorted(commune_to[code]) for code in sorted(commune_to)}},
    }


def render(registry: dict[str, Any]) -> bytes:
    """The JSON text of the artefact (before compression): the bytes a rerun must reproduce."""
    return json.dumps(registry, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def compress(text: bytes) -> bytes:
    # mtime=0 and no file name in the header: the same text always gives the same file.
    return gzip.compress(text, compresslevel=9, mtime=0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else ARTEFACT
    try:
        registry = build_registry()
    except BuildError as error:
        print(f"ioc.areas.build: {error}", file=sys.stderr)
        return 1
    data = compress(render(registry))
    target.write_bytes(data)
    counts = {era: {level: len(rows) for level, rows in registry[era].items()} for era in ("former", "current")}
    print(f"{target}: {len(data)} bytes from {PACKAGE} {VERSION}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
