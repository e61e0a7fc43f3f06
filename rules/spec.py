"""What a rule says (docs/rules.md): the fields every kind shares, `match`, comparisons and the RuleSet.

Rules are strict pydantic models (`extra="forbid"`: a misspelt key is an error, never a default). Each
kind (`ioc.rules.kinds`) subclasses `RuleBase` with its own `kind` literal and fields; the union of them,
discriminated by `kind`, is what the loader validates.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

import orjson
from ioc.rules.template import Template
from ioc.rules.updates import Severity
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ioc.config import Duration
from ioc.envelope import AreaLevel
from ioc.regex import compile_regex

__all__ = [
    "BUILTIN_LABELS",
    "OPS",
    "CapCategory",
    "CapInfo",
    "Comparison",
    "EventType",
    "Match",
    "Op",
    "Pattern",
    "RuleBase",
    "RuleSet",
    "Summaries",
    "Threshold",
]

EventType: TypeAlias = Literal["telemetry", "status", "dossier"]
Op: TypeAlias = Literal[">", ">=", "<", "<=", "==", "!="]
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
    "!=": operator.ne,
}
# Labels every event may have besides its tags (docs/rules.md). A tag of the same name is shadowed.
BUILTIN_LABELS = ("type", "source", "area", "entity", "metric")
# Names a summary may use besides the group's labels.
TEMPLATE_VALUES = ("value", "threshold", "area_name")
RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"  # rule ids go into MQTT topics: no / + #




class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Pattern(_Strict):
    """A regular expression a value must match whole: `{re: "dvc-.*"}`."""

    re: str

    @field_validator("re")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_regex(value)  # ValueError naming what RE2 refuses (docs/operations.md: linear-time matching)
        return value

    def compiled(self) -> Any:
        """The pattern in RE2, anchored; match with `ioc.regex.fullmatches`."""
        return compile_regex(self.re)


# A match value: one value, any of several, or a regular expression.
MatchValue: TypeAlias = str | Annotated[list[str], Field(min_length=1)] | Pattern


class Match(_Strict):
    """Which events a rule sees. Every given field must hold; `area` also matches the area's
    descendants in the registry; every tag in `tags` must be present and match."""

    type: EventType | Annotated[list[EventType], Field(min_length=1)] | None = None
    source: MatchValue | None = None
    metric: MatchValue | None = None
    entity: MatchValue | None = None
    area: str | Annotated[list[str], Field(min_length=1)] | None = None
    tags: dict[str, str | Pattern] | None = None

    def values(self, name: str) -> frozenset[str] | None:
        """The literal values field `name` (or `tags.KEY`) must take, or None when it is not a fixed set."""
        value = self.tags.get(name[5:]) if name.startswith("tags.") and self.tags else getattr(self, name, None)
        if isinstance(value, str):
            return frozenset((value,))
        if isinstance(value, list):
            return frozenset(value)
        return None

    def fixes_label(self, label: str) -> frozenset[str] | None:
        """The values a group label can take given this match, when the match fixes them (for absence)."""
        if label in ("type", "source", "metric", "entity"):
            return self.values(label)
        if label in BUILTIN_LABELS:  # `area` matches descendants: not a fixed set
            return None
        return self.values(f"tags.{label}")


# OASIS CAP 1.2 `category` values.
CapCategory: TypeAlias = Literal["Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env",
                                 "Transport", "Infra", "CBRNE", "Other"]


class CapInfo(_Strict):
    """How the alerts of a `public: true` rule read as CAP 1.2 messages (`ioc.cap`). `category` defaults
    from what the rule watches (env.* metrics: Env; status: Infra; else Other), `event` to the rule id;
    `summary_en` (a template like `summary`) adds an English info block to the Vietnamese one."""

    category: CapCategory | None = None
    event: str | None = None
    event_en: str | None = None
    summary_en: str = ""
    instruction: str | None = None
    instruction_en: str | None = None


class Summaries(_Strict):
    """A summary per language: `summary: {vi: ..., en: ...}` (the wall and the alert JSON's `summaries`
    show the reader's; `summary` stays the Vietnamese one). Each is a template like a single summary."""

    vi: Annotated[str, Field(min_length=1)]
    en: str = ""


LevelMap: TypeAlias = Annotated[dict[AreaLevel, float], Field(min_length=1)]
# A number, a number per area level, or `target`: the KPI's target for the area's level (registry data).
Threshold: TypeAlias = float | LevelMap | Literal["target"]


class RuleBase(_Strict):
    """The fields of every kind. `for` is spelt `for` in YAML (`for_` here, a Python keyword)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)

    # Which event types the kind can judge at all (narrowed further by `match.type`).
    judges: ClassVar[frozenset[str]] = frozenset(("telemetry", "status", "dossier"))
    has_threshold: ClassVar[bool] = False

    id: Annotated[str, Field(pattern=RULE_ID_PATTERN)]
    kind: str
    severity: Severity
    summary: str | Summaries = ""  # a single (Vietnamese) template, or one per language
    match: Match = Match()
    group_by: list[str] = []
    for_: Duration = Field(default=0.0, alias="for")
    keep_firing_for: Duration = 0.0
    labels: dict[str, str] = {}
    runbook: str | None = None
    public: bool = False  # its firing and resolved alerts are published as CAP 1.2 (GET /api/v1/cap)
    cap: CapInfo = CapInfo()

    @model_validator(mode="after")
    def _common(self) -> RuleBase:
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by: a label is named twice")
        clash = sorted(set(self.labels) & set(self.group_by))
        if clash:
            raise ValueError(f"labels: {clash[0]!r} is also a group_by label")
        types = self.event_types()
        if not types:
            judged = " or ".join(sorted(self.kind_judges()))
            raise ValueError(f"match.type: a {self.kind} rule judges {judged} events")
        names = set(self.group_by) | set(self.labels) | {"value"}
        if self.has_threshold:
            names.add("threshold")
        if "area" in self.group_by:
            names.add("area_name")
        single = isinstance(self.summary, str)
        texts = (("summary" if single else "summary.vi", self.summary_vi), ("summary.en", self.summary_en),
                 ("cap.summary_en", self.cap.summary_en))
        for field_name, text in texts:
            try:
                template = Template.parse(text)
            except ValueError as error:
                raise ValueError(f"{field_name}: {error}") from None
            for name in template.names:
                if name not in names:
                    hint = ("area_name needs area in group_by" if name == "area_name" else
                            f"known: {', '.join(sorted(names))}")
                    raise ValueError(f"{field_name}: unknown name {name!r} in {{{{ {name} }}}} ({hint})")
        return self

    def kind_judges(self) -> frozenset[str]:
        """The event types this kind (with these settings) can judge at all."""
        return self.judges

    def event_types(self) -> frozenset[str]:
        """The event types this rule can see: `match.type` narrowed to what the kind judges."""
        wanted = self.match.type
        judged = self.kind_judges()
        if wanted is None:
            return judged
        return judged & frozenset([wanted] if isinstance(wanted, str) else wanted)

    @property
    def summary_vi(self) -> str:
        return self.summary if isinstance(self.summary, str) else self.summary.vi

    @property
    def summary_en(self) -> str:
        """The English summary template, "" when the rule has none."""
        return "" if isinstance(self.summary, str) else self.summary.en

    def template(self) -> Template:
        return Template.parse(self.summary_vi or self.id)

    def template_en(self) -> Template | None:
        """The English summary's template; None without one (readers fall back to the Vietnamese)."""
        return Template.parse(self.summary_en) if self.summary_en else None

    def digest(self) -> str:
        """A stable hash of the definition: equal digests mean the same rule (state may be kept)."""
        dumped = self.model_dump(mode="json", by_alias=True)
        return hashlib.sha256(orjson.dumps(dumped, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class Comparison(BaseModel):
    """`value op threshold`, with optional hysteresis: once the condition holds it stops holding only
    when the value passes `clear` the other way (for `>`/`>=`: drops below `clear`; for `<`/`<=`: rises
    above it)."""

    op: Op
    threshold: Threshold
    clear: float | LevelMap | None = None

    @model_validator(mode="after")
    def _clear_side(self) -> Comparison:
        if self.clear is None:
            return self
        if self.op in ("==", "!="):
            raise ValueError(f"clear: hysteresis needs an ordering op, not {self.op!r}")
        if isinstance(self.threshold, float | int) and isinstance(self.clear, float | int):
            if self.op in (">", ">=") and self.clear > self.threshold:
                raise ValueError(f"clear: {self.clear:g} must be at most the threshold {self.threshold:g}")
            if self.op in ("<", "<=") and self.clear < self.threshold:
                raise ValueError(f"clear: {self.clear:g} must be at least the threshold {self.threshold:g}")
        return self

    @model_validator(mode="after")
    def _levels_need_area(self) -> Comparison:
        by_level = not isinstance(self.threshold, float | int) or isinstance(self.clear, dict)
        group_by = getattr(self, "group_by", ["area"])
        if by_level and "area" not in group_by:
            raise ValueError("threshold: a threshold by level (or `target`) needs `area` in group_by")
        match = getattr(self, "match", None)
        if self.threshold == "target" and "metric" not in group_by and not (
                match is not None and len(match.values("metric") or ()) == 1):
            raise ValueError("threshold: `target` needs one `match.metric` (or `metric` in group_by): "
                             "the target is the registry's for that KPI")
        return self

    def holds(self, value: float, threshold: float, clear: float | None, was_holding: bool) -> bool:
        """Whether the condition holds for `value` (given whether it held before: hysteresis)."""
        if OPS[self.op](value, threshold):
            return True
        if clear is None or not was_holding:
            return False
        return value >= clear if self.op in (">", ">=") else value <= clear


@dataclass(frozen=True)
class RuleSet:
    """Loaded rules in file order, with where each was defined (`file:line`)."""

    rules: tuple[Any, ...] = ()  # RuleBase subclasses (the kinds' models)
    origins: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, rule_id: str) -> Any | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    @classmethod
    def of(cls, rules: Sequence[Any]) -> RuleSet:
        """A RuleSet of models built in code (tests, benchmarks)."""
        return cls(tuple(rules), {rule.id: "<code>" for rule in rules})
