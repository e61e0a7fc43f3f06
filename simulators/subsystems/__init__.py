"""The subsystems a scenario may play, by name (a registry: adding one never touches the player).

Each is a module with `NAME`, a `Config` model (its section of the scenario), `sources(config)` (the
event sources it publishes as) and `stream(config, context)` (see `ioc.simulators.subsystems.base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ioc.simulators.subsystems import cells, dossiers, environment, probes
from ioc.simulators.subsystems.base import Config, Context, Stream


@dataclass(frozen=True)
class Subsystem:
    """One entry of the registry: its config model, its sources and its stream."""

    name: str
    config: type[Config]
    module: ModuleType
    incident_kinds: tuple[str, ...]  # the incidents it acts on (besides `silent`, which the player applies)

    def sources(self, config: Any) -> list[str]:
        return list(self.module.sources(config))

    def stream(self, config: Any, context: Context) -> Stream:
        return self.module.stream(config, context)  # type: ignore[no-any-return]


SUBSYSTEMS: dict[str, Subsystem] = {
    "dossiers": Subsystem("dossiers", dossiers.DossiersConfig, dossiers, ("backlog",)),
    "cells": Subsystem("cells", cells.CellsConfig, cells, ("outage",)),
    "environment": Subsystem("environment", environment.EnvironmentConfig, environment, ("aqi-spike",)),
    "probes": Subsystem("probes", probes.ProbesConfig, probes, ("service-down",)),
}

__all__ = ["SUBSYSTEMS", "Subsystem"]
