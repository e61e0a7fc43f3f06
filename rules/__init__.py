"""The rule engine (docs/rules.md): rule files in, alert state changes out.

- `ioc.rules.loader.load_rules(paths)` reads rule YAML into a `RuleSet` (or a ConfigError naming file:line).
- `ioc.rules.engine.RuleEngine` judges events and the passing of event time, reporting `AlertUpdate`s.
- `ioc.rules.testing` runs rule unit tests (`ioc rules test`) and offers a `Harness` to drive the engine.
- `rules/packs/*.yaml` are the shipped rule packs, `rules/tests/*.yaml` their unit tests.

The language is documented in `rules/README.md`.
"""

from __future__ import annotations

from ioc.rules.engine import RuleEngine, StateError
from ioc.rules.loader import load_rules
from ioc.rules.spec import RuleSet

__all__ = ["RuleEngine", "RuleSet", "StateError", "load_rules"]
