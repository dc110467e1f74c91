"""``pytest --llmcheck HEAD --llmcheck-ab-base BASE``: latency and throughput items run the A/B loop.

Each such item measures its own configuration against the model of the same name in BASE
(`llmcheck.ab.engine`), and its record's metrics hold the A/B result under ``ab``: the pairs, the ratio,
its interval and the verdict. A regression fails the item; a model that BASE does not declare is
an error item that names it. BASE is described once per session (and a ``git:REF:path`` worktree
is removed when the session ends).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import pytest

from llmcheck.ab import engine as ab
from llmcheck.ab import sources as ab_sources
from llmcheck.results import Result
from llmcheck.settings import SettingsError, UsageError, duration, fraction, resolve

BASE_KEY = pytest.StashKey[dict]()


def add_options(group) -> None:
    group.addoption(
        "--llmcheck-ab-base",
        metavar="BASE",
        help="A/B mode: latency and throughput items are measured interleaved against the same-named model "
        "of BASE (a model file, folder or git:REF:path); their verdict is the ratio HEAD/BASE",
    )
    group.addoption(
        "--llmcheck-ab-budget", metavar="TIME", default="30s", help="A/B time budget per item (default 30s)"
    )
    group.addoption(
        "--llmcheck-ab-precision",
        metavar="FRACTION",
        default="0.02",
        help="A/B: stop an item once its CI half-width is within this (default 2%%)",
    )
    group.addoption(
        "--llmcheck-ab-threshold",
        metavar="FRACTION",
        default="5%",
        help="A/B: the smallest change that counts (default 5%%)",
    )
    group.addoption(
        "--llmcheck-ab-statistic",
        choices=sorted(ab.STATISTICS),
        default=ab.Options.statistic,
        help="A/B: statistic of each turn's samples (default %(default)s)",
    )


def applies(item) -> bool:
    return bool(item.config.getoption("llmcheck_ab_base", None)) and item.check.name in ab.METRICS


def _options(config) -> ab.Options:
    return ab.Options(
        budget_s=duration(config.getoption("llmcheck_ab_budget"), "--llmcheck-ab-budget"),
        precision=fraction(config.getoption("llmcheck_ab_precision"), "--llmcheck-ab-precision"),
        threshold=fraction(config.getoption("llmcheck_ab_threshold"), "--llmcheck-ab-threshold"),
        statistic=config.getoption("llmcheck_ab_statistic"),
    )


def _base(config, startup_timeout: float) -> dict[str, Any]:
    """BASE resolved and described once per session: {"source", "models"} or {"error"}."""
    if BASE_KEY not in config.stash:
        stack = ExitStack()
        config.add_cleanup(stack.close)
        spec = config.getoption("llmcheck_ab_base")
        try:
            source = ab_sources.resolve(spec, stack, config.invocation_params.dir)
        except ab_sources.SourceError as exc:
            config.stash[BASE_KEY] = {"error": f"--llmcheck-ab-base: {exc}"}
            return config.stash[BASE_KEY]
        session = ab.Session(startup_timeout, cwd=str(config.invocation_params.dir))
        try:
            models = session.describe({"BASE": str(source.path)}, keep=False)["BASE"]
        finally:
            session.close()
        config.stash[BASE_KEY] = (
            {"source": source, "models": models}
            if isinstance(models, list)
            else {"error": f"--llmcheck-ab-base {spec}: {models}"}
        )
    return config.stash[BASE_KEY]


def run(item, state) -> Result:
    """The A/B loop for one item; its Result carries the outcome under metrics["ab"]."""
    from llmcheck.plugins.state import model_layers

    try:
        opts = _options(item.config)
        layers = model_layers(state, item.model, item.path)
        glob, params, enabled = resolve([ab.plan_layer(item.check.name), *layers], state.checks, item.check)
    except (SettingsError, UsageError) as exc:
        return Result("error", f"llmcheck settings: {exc}")
    item.params = dict(params)
    opts = replace(opts, seed=glob["seed"])  # the run's seed also draws the order of each round
    if not enabled:
        return Result("skipped", f"{item.check.name} is turned off (checks={{{item.check.name!r}: False}})")
    base = _base(item.config, glob["startup_timeout"])
    if "error" in base:
        return Result("error", base["error"])
    names = [m["name"] for m in base["models"]]
    if item.model["name"] not in names:
        return Result(
            "error",
            f"model {item.model['name']!r} is not declared in BASE {base['source'].spec} "
            f"(BASE declares: {', '.join(names) or 'none'})",
        )
    return _loop(item, base["source"], glob, params, opts)


def _loop(item, source, glob, params, opts: ab.Options) -> Result:
    metric = next(iter(ab.METRICS[item.check.name]))
    configs = ab.configurations(item.check, params, glob, item.model["name"], metric, item.variant)
    session = ab.Session(glob["startup_timeout"], cwd=str(item.config.invocation_params.dir))
    name = item.model["name"]
    try:

        def progress(r, elapsed, active):
            sys.stderr.write(ab.progress_line(r, elapsed, active, opts) + "\n")

        rounds = ab.run(
            session,
            ab.Side("BASE", str(source.path), name),
            ab.Side("HEAD", str(item.path), name),
            item.check.name,
            metric,
            configs,
            opts,
            progress,
        )
    finally:
        session.close()
    results = [ab.outcome(c, opts) for c in configs]
    verdicts = [r["verdict"] for r in results]
    status = (
        "failed"
        if "regression" in verdicts
        else "error"
        if "error" in verdicts
        else "skipped"
        if all(v == "skipped" for v in verdicts)
        else "passed"
    )
    summary = {
        "base": {"spec": source.spec, "path": str(source.path), "commit": source.commit},
        "metric": metric,
        "statistic": opts.statistic,
        "rounds": rounds,
        "options": dict(opts.__dict__),
        "results": results,
    }
    message = "; ".join(f"A/B vs BASE {source.spec} [{r['id']}]: {r['message']}" for r in results)
    samples = {f"ab_ratio[{r['id']}]": [p["ratio"] for p in r["pairs"]] for r in results if r["pairs"]}
    return Result(status, message, metrics={"ab": summary}, samples=samples)
