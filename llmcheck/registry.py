"""The check registry: the declarative shape every check has, and the one path that loads them.

Built-in checks are listed in llmcheck's own ``llmcheck.checks`` entry-point group, exactly as a
third-party package lists its checks, so both arrive through `load_checks`. Check modules must not
import torch at module level: the registry is read in the pytest process, which stays torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from llmcheck.results import Verdict

if TYPE_CHECKING:
    from llmcheck.context import Context, Params

GROUP = "llmcheck.checks"
# Needs a check may declare; a model that lacks one gets the check skipped with the reason.
KNOWN_NEEDS = {
    "causal": "a causal (decoder) model: declare @llmcheck.model(causal=True) or use an HF causal LM",
    "vocab_size": "a known vocabulary size: declare @llmcheck.model(vocab_size=N)",
    "cuda": "a CUDA device",
}


class RegistryError(Exception):
    """A check could not be loaded or is malformed."""


@dataclass(frozen=True)
class Param:
    """A typed check parameter with its default, meaning and bounds."""

    type: type
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    item_type: type | None = None  # element type when ``type`` is list
    choices: tuple | None = None


@dataclass(frozen=True)
class Check:
    """One check: what it needs, its parameters, how it measures and how it judges."""

    name: str
    family: str
    summary: str
    # In the worker: (llmcheck.Context, llmcheck.Params) -> metrics (plain JSON-able numbers); may raise llmcheck.Skip.
    measure: Callable[[Context, Params], dict[str, Any]]
    # (metrics, params) -> Verdict; pure: in the worker, or in the parent on numbers merged over processes.
    judge: Callable[[dict[str, Any], Params], Verdict]
    params: Mapping[str, Param] = field(default_factory=dict)
    needs: frozenset[str] = frozenset()
    timeout: float | None = None  # default seconds, when the check needs more than the global one
    timing: bool = False  # its numbers are timings: under pytest-xdist it runs alone (plugins/scheduling.py)
    # (params) -> configurations; each becomes its own item, ``name[bs=8-bfloat16]`` (see variant_id),
    # and reaches measure as ``ctx.variant``. None: one item per check.
    variants: Callable[[Params], list[dict[str, Any]]] | None = None
    # ([{"metrics", "samples"} per process], params) -> merged metrics; pure, torch-free. When set, the
    # harness measures in ``processes`` worker processes and judges the merged metrics (llmcheck.isolation.processes).
    merge: Callable[[list[dict[str, Any]], Params], dict[str, Any]] | None = None
    # Modules the session's fork server imports (after torch) for the processes this check starts
    # through it (llmcheck.isolation.forkserver); empty: the check starts no processes that way.
    preload: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = set(self.needs) - set(KNOWN_NEEDS)
        if unknown:
            raise RegistryError(
                f"check {self.name!r} needs unknown traits {sorted(unknown)}; known: {sorted(KNOWN_NEEDS)}"
            )
        if not self.name.replace("-", "_").isidentifier():
            raise RegistryError(f"check name {self.name!r} must be an identifier (letters, digits, _ or -)")


def variant_id(variant: Mapping[str, Any]) -> str:
    """The bracketed part of a variant's item id: strings as they are, other values as ``key=value``
    (``{"bs": 8, "precision": "bfloat16"}`` -> ``bs=8-bfloat16``)."""
    return "-".join(v if isinstance(v, str) else f"{k}={v}" for k, v in variant.items())


def load_checks() -> dict[str, Check]:
    """All checks from the ``llmcheck.checks`` entry-point group, sorted by name."""
    found: dict[str, tuple[Check, str]] = {}
    for ep in entry_points(group=GROUP):
        where = f"entry point {ep.name} = {ep.value}" + (f" (from {ep.dist.name})" if ep.dist else "")
        try:
            check = ep.load()
        except Exception as exc:  # a broken plugin must say which one it is
            raise RegistryError(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(check, Check):
            raise RegistryError(f"{where} is {type(check).__name__}, expected an llmcheck.Check")
        if check.name in found and found[check.name][1] != where:
            raise RegistryError(f"two checks are named {check.name!r}: {found[check.name][1]} and {where}")
        found[check.name] = (check, where)
    return {name: found[name][0] for name in sorted(found)}
