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


@dataclass(frozen=True)
class Verdict:
    status: str
    message: str

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"verdict status {self.status!r} is not one of {', '.join(STATUSES)}")


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
