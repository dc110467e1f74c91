"""The plain result record that crosses the process boundary and feeds every report.

A check *measures* (returns numbers), a judgement turns the numbers into a `Verdict`, and the
harness wraps both into a `Result`. Nothing here renders: reports only read these records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("passed", "failed", "error", "skipped", "timeout", "crashed")
# Statuses pytest shows as a failure; the report keeps their own names.
FAILING = frozenset({"failed", "error", "timeout", "crashed"})


class Skip(Exception):
    """Raised by a check's measure function when the check does not apply; carries the reason."""


class LlmcheckAdvisory(UserWarning):
    """A what-if finding the model file did not opt into (a compression variant it does not ship,
    an autocast precision it does not run in): reported with its numbers, never a failure.

    Every item with advisory findings emits one; ``-W error::llmcheck.results.LlmcheckAdvisory``
    turns them all into failures, ``-W ignore::...`` silences them.
    """


@dataclass(frozen=True)
class Verdict:
    status: str
    message: str
    # What-if findings the user did not opt into, each with its numbers: they never change ``status``.
    advisory: tuple[str, ...] = ()

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"verdict status {self.status!r} is not one of {', '.join(STATUSES)}")
        if isinstance(self.advisory, str) or not all(isinstance(a, str) for a in self.advisory):
            raise ValueError(f"verdict advisory {self.advisory!r} must be a sequence of strings (one per finding)")
        object.__setattr__(self, "advisory", tuple(self.advisory))


@dataclass
class Result:
    status: str
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    trace: str = ""  # traceback, thread stacks or fault trace: the evidence behind the message
    output: str = ""  # what the worker printed while the check ran
    duration_s: float = 0.0
    advisory: list[str] = field(default_factory=list)  # Verdict.advisory: findings that do not gate
    # Seconds by phase in the worker (llmcheck.isolation.child): interpreter_s and torch_s (a worker started
    # for this check), import_s, setup_s, build_s, plan_s, measure_s, judge_s; and builds (factory calls)
    phases: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, verdict: Verdict, metrics=None, samples=None, artifacts=None) -> Result:
        """The record of a judged measurement: the verdict's status, message and advisory findings."""
        return cls(
            verdict.status,
            verdict.message,
            metrics if metrics is not None else {},
            samples if samples is not None else {},
            artifacts if artifacts is not None else {},
            advisory=list(verdict.advisory),
        )

    def to_json(self) -> dict[str, Any]:
        return strict_json(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def strict_json(value: Any) -> Any:
    """Copy ``value`` into plain JSON types; non-finite floats become the strings NaN/Infinity.

    ``json.dump`` would otherwise write bare ``NaN`` literals, which strict parsers reject.
    """
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return strict_json(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return repr(value)
