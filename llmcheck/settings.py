"""Settings: defaults, the profile, ``[tool.llmcheck]``, the pytest ini file, per-model ``checks=``
and the command line, merged in that order (later wins) and validated against each check's parameters.

A profile (``profile = "quick"``, ``--llmcheck-profile quick``) is a layer of its own between the
defaults and pyproject: wherever the ``profile`` setting is chosen, the profile's values sit below
every file, model and command-line setting, which still override them.

Validation happens per item, so a bad value fails the items it concerns with a message that names
the value, where it came from and the valid choices, never the whole session.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcheck.context import Params
from llmcheck.registry import Check, Param

PROFILES = ("default", "quick", "full")
# quick: for pull requests. The correctness checks and the cheap fault checks, each within a small
# budget; checks whose numbers are timings (Check.timing) and these families are off.
QUICK_OFF_FAMILIES = frozenset({"distributed", "memory", "training", "compile"})
QUICK = {
    "leak": {"iterations": 30, "budget_s": 15.0},
    "gradient": {"budget_s": 10.0},
    "fuzz": {"examples": 20, "budget_s": 5.0},
    "generation": {"budget_s": 10.0},
}
# full: for nightly runs. Everything, with more work wanted and larger budgets (each within 80% of
# the check's default timeout, which a budget never plans past).
FULL = {
    "leak": {"iterations": 120, "budget_s": 240.0},
    "gradient": {"overfit_steps": 100, "budget_s": 120.0},
    "fuzz": {"examples": 200, "max_seconds": 30.0, "budget_s": 60.0},
    "generation": {"prompts": 4, "max_new_tokens": 64, "budget_s": 120.0},
    "memory": {"budget_s": 240.0},
    "training": {"steps": 300, "budget_s": 240.0},
    "latency": {"processes": 5, "budget_s": 120.0},
    "throughput": {"batch_sizes": [1, 4, 16, 64], "budget_s": 240.0},
    "distributed": {"budget_s": 140.0},
}

GLOBAL_PARAMS: dict[str, Param] = {
    "profile": Param(
        str,
        "default",
        "settings layer below pyproject: quick (pull requests: correctness and cheap fault checks, small "
        "budgets), full (nightly: everything, larger budgets) or default",
        choices=PROFILES,
    ),
    "timeout": Param(float, 300.0, "seconds a check may run before its worker is killed", minimum=0.1),
    "startup_timeout": Param(float, 120.0, "seconds a worker may take to import torch and the model file", minimum=1),
    "seed": Param(int, 0, "seed for every RNG before each factory call and batch"),
    "device": Param(str, "cpu", "device the checks run on: cpu, cuda or cuda:N"),
    "batch_size": Param(int, 2, "batch size of the default check batch", minimum=1),
    "seq_len": Param(int, 16, "sequence length of the default check batch (capped at max_seq_len)", minimum=1),
    "memory_limit": Param(
        float,
        0.8,
        "resident memory a worker's process tree may use: a fraction (<= 1) of the memory available when the "
        "session starts, or bytes (> 1); over it the check is crashed (out of memory); 0: no limit",
        minimum=0,
    ),
    "hang_factor": Param(
        float,
        20.0,
        "a check with no progress (forward, backward, ctx.progress) for this many times the model's step time, "
        "at least hang_floor_s, while its processes are idle, is a hang; 0: only the timeout",
        minimum=0,
    ),
    "hang_floor_s": Param(
        float, 10.0, "seconds without progress before the hang_factor rule may fire, however short the step", minimum=1
    ),
}


class SettingsError(ValueError):
    """A setting has an unknown name or a value of the wrong type or range."""


@dataclass(frozen=True)
class Layer:
    source: str  # where the values came from, for error messages
    values: Mapping[str, Any]  # global keys, and check name -> {param: value} or bool


def parse_value(text: str) -> Any:
    """A command-line or ini value: JSON (numbers, true/false, lists) or else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.strip().lower()
        return {"true": True, "false": False}.get(lowered, text.strip())


def assignments(lines: list[str], source: str) -> Layer:
    """``KEY=VALUE`` lines (``timeout=60``, ``gradient.overfit_steps=50``) as a layer."""
    values: dict[str, Any] = {}
    for line in lines:
        if not line.strip():
            continue
        key, sep, raw = line.partition("=")
        if not sep:
            raise SettingsError(f"{line!r} from {source}: expected KEY=VALUE, e.g. gradient.overfit_steps=50")
        head, dot, param = key.strip().partition(".")
        if dot:
            values.setdefault(head, {})
            if not isinstance(values[head], dict):
                raise SettingsError(f"{line!r} from {source}: {head} was already set to {values[head]!r}")
            values[head][param] = parse_value(raw)
        else:
            values[head] = parse_value(raw)
    return Layer(source, values)


def pyproject_layer(path: Path) -> Layer | None:
    """``[tool.llmcheck]`` of a pyproject.toml; check settings live in ``[tool.llmcheck.checks.NAME]``."""
    if not path.is_file():
        return None
    with path.open("rb") as f:
        table = tomllib.load(f).get("tool", {}).get("llmcheck")
    if table is None:
        return None
    values = {k: v for k, v in table.items() if k not in ("checks", "compare")}
    checks = table.get("checks", {})
    if not isinstance(checks, dict):
        raise SettingsError(
            f"[tool.llmcheck] checks = {checks!r} in {path}: expected a table of check name -> settings"
        )
    values.update(checks)
    return Layer(f"[tool.llmcheck] in {path}", values)


def coerce(name: str, value: Any, param: Param, source: str) -> Any:
    """``value`` as ``param``'s type, or a SettingsError that echoes name, value, type and source."""
    original = value

    def bad(expected: str) -> SettingsError:
        return SettingsError(f"{name} = {original!r} ({type(original).__name__}) from {source}: expected {expected}")

    kind = param.type
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad("an integer")
        value = int(value)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise bad("a string")
    elif kind is list:
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list of {param.item_type.__name__ if param.item_type else 'values'}")
        item = (
            Param(param.item_type, None, "", param.minimum, param.maximum, choices=param.choices)
            if param.item_type
            else None
        )
        if not value:
            raise bad("a non-empty list")
        return [coerce(f"{name}[{i}]", v, item, source) if item else v for i, v in enumerate(value)]
    if param.minimum is not None and value < param.minimum:
        raise bad(f"a value >= {param.minimum:g}")
    if param.maximum is not None and value > param.maximum:
        raise bad(f"a value <= {param.maximum:g}")
    if param.choices is not None and value not in param.choices:
        raise bad("one of " + ", ".join(map(repr, param.choices)))
    return value


def profile_values(name: str, checks: Mapping[str, Check]) -> dict[str, Any]:
    """The settings of profile ``name`` for the checks that are loaded, each with the parameters it
    has (tests/test_profiles.py holds every built-in check to all of the profile's)."""
    if name == "quick":
        off = {n: False for n, c in checks.items() if c.timing or c.family in QUICK_OFF_FAMILIES}
        return {**off, **_known(QUICK, checks, skip=off)}
    if name == "full":
        return _known(FULL, checks)
    return {}


def _known(table: Mapping[str, Mapping[str, Any]], checks: Mapping[str, Check], skip=()) -> dict[str, Any]:
    return {
        n: {k: v for k, v in values.items() if k in check_params(checks[n])}
        for n, values in table.items()
        if n in checks and n not in skip
    }


def profile_layer(layers: list[Layer], checks: Mapping[str, Check]) -> Layer:
    """The layer of the profile the ``layers`` choose (the last one that sets ``profile`` wins)."""
    name, spec = GLOBAL_PARAMS["profile"].default, GLOBAL_PARAMS["profile"]
    for layer in layers:
        if "profile" in layer.values:
            name = coerce("profile", layer.values["profile"], spec, layer.source)
    return Layer(f"the {name} profile", profile_values(name, checks))


def turned_off_by(layers: list[Layer], checks: Mapping[str, Check], name: str) -> str:
    """Where check ``name`` was turned off: the source of the last layer, profile included, that set it."""
    found = ""
    for layer in [profile_layer(layers, checks), *layers]:
        if isinstance(layer.values.get(name), bool):
            found = "" if layer.values[name] else layer.source
    return found


def check_params(check: Check) -> dict[str, Param]:
    """The check's own parameters plus ``timeout``, which every check accepts."""
    timeout = GLOBAL_PARAMS["timeout"]
    if check.timeout is not None:
        timeout = Param(float, check.timeout, timeout.doc, minimum=timeout.minimum)
    return {**check.params, "timeout": timeout}


def _valid(names) -> str:
    return ", ".join(sorted(names))


def resolve(layers: list[Layer], checks: Mapping[str, Check], check: Check) -> tuple[Params, Params, bool]:
    """Merge the layers for one check, below them the profile they choose: (global settings, check
    parameters, enabled)."""
    layers = [profile_layer(layers, checks), *layers]
    glob = Params({k: p.default for k, p in GLOBAL_PARAMS.items()})
    spec = check_params(check)
    params = Params({k: p.default for k, p in spec.items()})
    explicit_timeout = global_timeout = False
    enabled = True
    for layer in layers:
        for key, value in layer.values.items():
            if key in GLOBAL_PARAMS:
                glob[key] = coerce(key, value, GLOBAL_PARAMS[key], layer.source)
                global_timeout |= key == "timeout"
            elif key in checks:
                if key != check.name:
                    continue
                if isinstance(value, bool):
                    enabled = value
                    continue
                if not isinstance(value, Mapping):
                    raise SettingsError(
                        f"{key} = {value!r} from {layer.source}: expected a table of parameters or true/false"
                    )
                for pname, pvalue in value.items():
                    if pname not in spec:
                        raise SettingsError(
                            f"unknown parameter {key}.{pname} from {layer.source}; "
                            f"valid parameters of {key}: {_valid(spec)}"
                        )
                    params[pname] = coerce(f"{key}.{pname}", pvalue, spec[pname], layer.source)
                    explicit_timeout |= pname == "timeout"
            else:
                raise SettingsError(
                    f"unknown setting {key!r} from {layer.source}; valid global settings: "
                    f"{_valid(GLOBAL_PARAMS)}; valid checks: {_valid(checks)}"
                )
    # A timeout the user set for all checks wins over a check's built-in default.
    if not explicit_timeout and (global_timeout or check.timeout is None):
        params["timeout"] = glob["timeout"]
    return glob, params, enabled


class UsageError(ValueError):
    """A bad command-line option value; the command exits with status 2."""


def duration(text: str, option: str = "--ab-budget") -> float:
    """Seconds from ``60``, ``60s``, ``2m`` or ``1h``."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected seconds, e.g. 60s, 90 or 5m") from None
    if value <= 0:
        raise UsageError(f"{option} {text!r}: must be positive")
    return value


def fraction(text: str, option: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected a fraction or a percentage, e.g. 0.05 or 5%") from None
    if not 0 <= value < 1:
        raise UsageError(f"{option} {text!r}: must lie in [0, 1) (as a fraction) or [0%, 100%)")
    return value
