"""The area registry (CONTRACT §10): the whole country in both eras from packaged open data, the 2025
conversion of former codes, CSV overrides, KPI targets by level.

- `model`: Area and Target; `dates`: the calendar (Vietnam's day, the reform day);
- `csvfile`: the CSV files, checked whole; `national`: the generated artefact, narrowing, overrides;
- `registry`: AreaRegistry, the lookups; `build`: the build step; `cli`: `ioc areas ...`.
"""

from ioc.areas.dates import LOCAL_ZONE, REFORM_DAY, REFORM_NS, local_date, parse_day
from ioc.areas.national import Former, Source, artefact_path
from ioc.areas.registry import AreaRegistry, default_targets_path, registry_from_settings
from ioc.areas.units import LEVELS, Area

__all__ = ["LEVELS", "LOCAL_ZONE", "REFORM_DAY", "REFORM_NS", "Area", "AreaRegistry", "Former", "Source",
           "artefact_path", "default_targets_path", "local_date", "parse_day", "registry_from_settings"]
