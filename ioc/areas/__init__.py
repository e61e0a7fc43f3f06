"""The area registry (CONTRACT §10): the whole country in both eras, the 2025 conversion, CSV overrides."""

from ioc.areas.registry import (
    LEVELS,
    LOCAL_ZONE,
    Area,
    AreaRegistry,
    default_areas_path,
    default_targets_path,
    local_date,
    parse_day,
    registry_from_settings,
)

__all__ = ["LEVELS", "LOCAL_ZONE", "Area", "AreaRegistry", "default_areas_path", "default_targets_path",
           "local_date", "parse_day", "registry_from_settings"]
