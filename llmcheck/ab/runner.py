"""Running an A/B comparison of every model of two sources: which models and configurations, each
measured against BASE's model of the same name within its share of the budget (`engine.run`).

Used by ``llmcheck ab`` and ``llmcheck ci`` (`llmcheck.ab.cli`), which build the document from what
this returns; a model that BASE does not declare gets an error record that names it.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcheck.ab import engine as ab
from llmcheck.settings import Layer, UsageError, assignments, pyproject_layer, resolve


@dataclass(frozen=True)
class Request:
    """What to measure: the check and its series, which models and configurations."""

    check: str = "latency"
    metric: str = ""  # default: the check's first series
    models: tuple[str, ...] = ()  # default: every model of HEAD
    keyword: str = ""
    configs: str = ""  # ID,ID
    quiet: bool = False

    def series(self) -> str:
        metric = self.metric or next(iter(ab.METRICS[self.check]))
        if metric not in ab.METRICS[self.check]:
            raise UsageError(f"--metric {metric!r}: {self.check} offers {', '.join(ab.METRICS[self.check])}")
        return metric


@dataclass
class Measured:
    """What a comparison gave: the result records, the rounds run, the workers' environment, when."""

    results: list[dict[str, Any]]
    rounds: int
    environment: dict[str, Any]
    started: float
    finished: float


def settings_layers(check: str, assigned: list[str]) -> list[Layer]:
    """pyproject.toml's [tool.llmcheck], the A/B per-process plan, then ``--set`` (HEAD's model layer
    goes in before the last, per model)."""
    here = Path.cwd().resolve()
    found = next((d / "pyproject.toml" for d in (here, *here.parents) if (d / "pyproject.toml").is_file()), None)
    files = [layer for layer in [pyproject_layer(found) if found else None] if layer]
    return [*files, ab.plan_layer(check), assignments(assigned, "--set on the command line")]


def run_models(request: Request, opts: ab.Options, layers: list[Layer], sources: dict) -> Measured:
    """HEAD's models measured against BASE's (sources: label -> ab.sources.Source)."""
    from llmcheck.registry import load_checks

    checks = load_checks()
    check = checks[request.check]
    glob, _, _ = resolve(layers, checks, check)
    with ExitStack() as stack:
        session = ab.Session(startup_timeout=glob["startup_timeout"])
        stack.callback(session.close)
        started = time.time()
        described = session.describe({label: str(s.path) for label, s in sources.items()})
        for label, models in described.items():
            if isinstance(models, str):
                raise UsageError(f"{label} {sources[label].spec}: {models}")
        results, rounds = _compare(request, opts, layers, checks, check, session, described, sources)
    return Measured(results, rounds, session.env, started, time.time())


def _compare(request: Request, opts, layers, checks, check, session, described, sources) -> tuple[list[dict], int]:
    """Per model of HEAD: its configurations, measured against BASE's model of the same name."""
    base_names = [m["name"] for m in described["BASE"]]
    models = [m for m in described["HEAD"] if not request.models or m["name"] in request.models]
    if not models:
        raise UsageError(
            f"no model {list(request.models)} in HEAD; it declares {[m['name'] for m in described['HEAD']]}"
        )
    results, rounds, deadline = [], 0, time.monotonic() + opts.budget_s
    for i, info in enumerate(models):
        if info["name"] not in base_names:
            results.append(missing(info["name"], sources["BASE"].spec, base_names))
            continue
        model_layer = Layer(f"@llmcheck.model(checks=...) of {info['name']} in HEAD", info.get("checks") or {})
        glob, params, _ = resolve([*layers[:-1], model_layer, layers[-1]], checks, check)
        every = ab.configurations(check, params, glob, info["name"], request.series())
        chosen = ab.select(every, request.keyword, [c for c in request.configs.split(",") if c])
        if not chosen:
            raise UsageError(
                f"no configuration of {info['name']} matches -k {request.keyword!r} --configs {request.configs!r}; "
                f"there are: {', '.join(c.key for c in every)}"
            )
        share = (deadline - time.monotonic()) / (len(models) - i)
        sides = [ab.Side(label, str(sources[label].path), info["name"]) for label in ("BASE", "HEAD")]
        share_opts = ab.Options(**{**opts.__dict__, "budget_s": max(round(share, 1), 1.0)})
        progress = None if request.quiet else _progress(share_opts)
        rounds += ab.run(session, *sides, request.check, request.series(), chosen, share_opts, progress)
        results += [ab.outcome(c, opts) for c in chosen]
    return results, rounds


def _progress(opts: ab.Options):
    return lambda r, elapsed, active: print(ab.progress_line(r, elapsed, active, opts), file=sys.stderr)


def missing(model: str, base_spec: str, base_names: list[str]) -> dict[str, Any]:
    """The error record of a HEAD model that BASE does not declare."""
    return {
        "id": "*",
        "model": model,
        "variant": {},
        "verdict": "error",
        "stop": "",
        "pairs": [],
        "message": (
            f"model {model!r} is not declared in BASE {base_spec} (BASE declares: {', '.join(base_names) or 'none'})"
        ),
        "base_median_ms": None,
        "head_median_ms": None,
        "detectable": None,
        "estimate": {"n": 0, "ratio": None, "ci_low": None, "ci_high": None, "half_width": None},
    }
