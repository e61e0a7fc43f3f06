"""Fuzzing of every HTTP route and of MQTT payloads with hypothesis (docs/operations.md: bad input never gets
a 5xx; every message is accepted or dead-lettered).

Two settings profiles: `fuzz-short` (the pytest run: derandomized, so CI sees the same cases every time)
and `fuzz-long` (`python -m tests.fuzz --cases 100000`: a printed seed, generation only, every finding
recorded instead of stopping at the first).
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
          HealthCheck.large_base_example, HealthCheck.filter_too_much]

settings.register_profile("fuzz-short", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=_QUIET)
settings.register_profile("fuzz-long", deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=_QUIET)
