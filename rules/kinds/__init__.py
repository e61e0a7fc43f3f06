"""The rule kinds: a registry from `kind` name to its evaluator class (each a small module).

Adding a kind is adding a module and a line here; the loader's union of rule models is built from it.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from ioc.rules.kinds.absence import AbsenceKind, AbsenceRule
from ioc.rules.kinds.base import Context, Judgement, Kind
from ioc.rules.kinds.share import ShareKind, ShareRule
from ioc.rules.kinds.status import StatusKind, StatusRule
from ioc.rules.kinds.threshold import ThresholdKind, ThresholdRule
from ioc.rules.kinds.window import WindowKind, WindowRule
from pydantic import Field, TypeAdapter

__all__ = [
    "KINDS", "RULE_ADAPTER", "AbsenceRule", "Context", "Judgement", "Kind", "Rule", "ShareRule", "StatusRule",
    "ThresholdRule", "WindowRule", "make_kind",
]

KINDS: dict[str, type[Kind[Any]]] = {
    "threshold": ThresholdKind,
    "window": WindowKind,
    "absence": AbsenceKind,
    "status": StatusKind,
    "share": ShareKind,
}

# The union of the kinds' models, built from the registry (so a new kind is one line above).
Rule = Annotated[  # type: ignore[valid-type]
    Union[tuple(kind.model for kind in KINDS.values())],  # noqa: UP007
    Field(discriminator="kind"),
]
RULE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Rule)


def make_kind(rule: Any, context: Context) -> Kind[Any]:
    """The evaluator of `rule` (a validated model of one of the kinds)."""
    return KINDS[rule.kind](rule, context)
