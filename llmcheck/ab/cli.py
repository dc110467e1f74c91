"""``llmcheck ab BASE HEAD``: the command line of A/B benchmarking (the engine is `llmcheck.ab.engine`).

Exit codes: 0 no regression, 1 a regression (for CI), 2 a usage error or a configuration that
could not be measured (a model missing from BASE, a model file that does not load).
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from llmcheck.ab import engine as ab
from llmcheck.ab import sources as ab_sources
from llmcheck.reports import ab_report
from llmcheck.settings import (
    Layer,
    SettingsError,
    UsageError,
    assignments,
    duration,
    fraction,
    pyproject_layer,
    resolve,
)


def add_parser(sub) -> None:
    a = sub.add_parser(
        "ab",
        help="A/B benchmark two versions of a model, interleaved; exit 1 on a regression",
        description="Measure BASE and HEAD in alternating fresh worker processes and judge the ratio "
        "HEAD/BASE per configuration. BASE and HEAD are model files, model folders or "
        "git:REF:path (checked out into a temporary worktree).",
    )
    a.add_argument("base", help="the baseline: model file, folder, or git:REF:path")
    a.add_argument("head", help="the version to judge: model file, folder, or git:REF:path")
    a.add_argument(
        "--check", choices=sorted(ab.METRICS), default="latency", help="the check that measures (default latency)"
    )
    a.add_argument(
        "--metric",
        help="series to compare: latency forward|prefill|ttft|decode (default forward), "
        "throughput inference|training (default inference)",
    )
    a.add_argument("--model", action="append", default=[], help="only this model of HEAD (repeatable; default all)")
    a.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting, as --llmcheck-set: latency.batch_sizes=[1], seed=3 (repeatable)",
    )
    a.add_argument(
        "-k",
        dest="keyword",
        default="",
        metavar="TERMS",
        help="configurations whose id contains every term ('bs=1 float32'; 'not bfloat16' excludes)",
    )
    a.add_argument("--configs", default="", metavar="ID,ID", help="exactly these configuration ids")
    a.add_argument("--ab-budget", default="60s", metavar="TIME", help="wall time for the rounds: 60s, 5m (default 60s)")
    a.add_argument(
        "--ab-precision",
        default="0.02",
        metavar="FRACTION",
        help="stop a configuration once its CI half-width is within this: 0.02 or 2%% (default 2%%)",
    )
    a.add_argument("--threshold", default="5%", metavar="FRACTION", help="smallest change that counts (default 5%%)")
    a.add_argument(
        "--ab-statistic",
        choices=sorted(ab.STATISTICS),
        default=ab.Options.statistic,
        help="of each process's samples (default %(default)s)",
    )
    a.add_argument(
        "--min-pairs",
        type=int,
        default=ab.Options.min_pairs,
        help="process pairs before the precision stop (default 5)",
    )
    a.add_argument(
        "--ab-recycle",
        type=int,
        default=ab.Options.recycle,
        metavar="K",
        help="rounds a pair of warm worker processes serves before a fresh pair starts; the interval is over "
        "process pairs (default %(default)s; 1: fresh processes every round)",
    )
    a.add_argument("--seed", type=int, default=0, help="seed of the per-round order (default 0)")
    a.add_argument("--json", metavar="PATH", help="write the result document (strict JSON)")
    a.add_argument("--markdown", nargs="?", const="-", metavar="PATH", help="write Markdown (stdout, or PATH)")
    a.add_argument(
        "--html", metavar="PATH", help="write a self-contained HTML page with a ratio plot per configuration"
    )
    a.add_argument("-q", "--quiet", action="store_true", help="no progress line per round")
    a.set_defaults(run=main)


def options(args) -> ab.Options:
    if args.min_pairs < 3:
        raise UsageError(f"--min-pairs {args.min_pairs}: need at least 3 (an interval needs 3 process pairs)")
    if args.ab_recycle < 1:
        raise UsageError(f"--ab-recycle {args.ab_recycle}: a process pair serves at least 1 round")
    return ab.Options(
        budget_s=duration(args.ab_budget),
        precision=fraction(args.ab_precision, "--ab-precision"),
        threshold=fraction(args.threshold, "--threshold"),
        seed=args.seed,
        min_pairs=args.min_pairs,
        statistic=args.ab_statistic,
        recycle=args.ab_recycle,
    )


def main(args) -> int:
    try:
        opts = options(args)
        metric = args.metric or next(iter(ab.METRICS[args.check]))
        if metric not in ab.METRICS[args.check]:
            raise UsageError(f"--metric {metric!r}: {args.check} offers {', '.join(ab.METRICS[args.check])}")
        layers = _layers(args)
        with ExitStack() as stack:
            sources = {
                label: ab_sources.resolve(spec, stack) for label, spec in (("BASE", args.base), ("HEAD", args.head))
            }
            return _run(args, opts, metric, layers, sources, stack)
    except (UsageError, SettingsError, ab_sources.SourceError) as exc:
        print(f"llmcheck ab: {exc}", file=sys.stderr)
        return 2


def _layers(args) -> list[Layer]:
    here = Path.cwd().resolve()
    found = next((d / "pyproject.toml" for d in (here, *here.parents) if (d / "pyproject.toml").is_file()), None)
    files = [layer for layer in [pyproject_layer(found) if found else None] if layer]
    return [*files, ab.plan_layer(args.check), assignments(args.set, "--set on the command line")]


def _run(args, opts: ab.Options, metric: str, layers: list[Layer], sources: dict, stack: ExitStack) -> int:
    from llmcheck.registry import load_checks

    checks = load_checks()
    check = checks[args.check]
    glob, _, _ = resolve(layers, checks, check)
    session = ab.Session(startup_timeout=glob["startup_timeout"])
    stack.callback(session.close)
    started = time.time()
    described = session.describe({label: str(s.path) for label, s in sources.items()})
    for label, models in described.items():
        if isinstance(models, str):
            raise UsageError(f"{label} {sources[label].spec}: {models}")
    results, rounds = _compare(args, opts, metric, layers, checks, check, session, described, sources)
    doc = ab_report.build(
        check=args.check,
        metric=metric,
        statistic=opts.statistic,
        rounds=rounds,
        base=_side(sources["BASE"]),
        head=_side(sources["HEAD"]),
        options=_options(opts),
        results=results,
        environment=session.env,
        producer=_producer(),
        started=started,
        finished=time.time(),
    )
    _write(args, doc)
    return 1 if doc["summary"].get("regression") else (2 if doc["summary"].get("error") else 0)


def _compare(args, opts, metric, layers, checks, check, session, described, sources) -> tuple[list[dict], int]:
    """Per model of HEAD: its configurations, measured against BASE's model of the same name."""
    base_names = [m["name"] for m in described["BASE"]]
    models = [m for m in described["HEAD"] if not args.model or m["name"] in args.model]
    if not models:
        raise UsageError(f"no model {args.model} in HEAD; it declares {[m['name'] for m in described['HEAD']]}")
    results, rounds, deadline = [], 0, time.monotonic() + opts.budget_s
    for i, info in enumerate(models):
        if info["name"] not in base_names:
            results.append(missing(info["name"], sources["BASE"].spec, base_names))
            continue
        model_layer = Layer(f"@llmcheck.model(checks=...) of {info['name']} in HEAD", info.get("checks") or {})
        glob, params, _ = resolve([*layers[:-1], model_layer, layers[-1]], checks, check)
        every = ab.configurations(check, params, glob, info["name"], metric)
        chosen = ab.select(every, args.keyword, [c for c in args.configs.split(",") if c])
        if not chosen:
            raise UsageError(
                f"no configuration of {info['name']} matches -k {args.keyword!r} --configs {args.configs!r}; "
                f"there are: {', '.join(c.key for c in every)}"
            )
        share = (deadline - time.monotonic()) / (len(models) - i)
        sides = [ab.Side(label, str(sources[label].path), info["name"]) for label in ("BASE", "HEAD")]
        share_opts = ab.Options(**{**opts.__dict__, "budget_s": max(round(share, 1), 1.0)})
        rounds += ab.run(
            session, *sides, args.check, metric, chosen, share_opts, None if args.quiet else _progress(share_opts)
        )
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


def _side(source: ab_sources.Source) -> dict[str, Any]:
    return {"spec": source.spec, "path": str(source.path), "commit": source.commit}


def _options(o: ab.Options) -> dict[str, Any]:
    return dict(o.__dict__)


def _producer() -> dict[str, Any]:
    try:
        return {"name": "llmcheck", "version": version("llmcheck")}
    except PackageNotFoundError:
        return {"name": "llmcheck", "version": None}


def _write(args, doc: dict[str, Any]) -> None:
    from llmcheck.reports import ab_html

    if args.json:
        ab_report.write_json(args.json, doc)
    if args.html:
        ab_html.write(args.html, doc)
    if args.markdown == "-":
        sys.stdout.write(ab_report.markdown(doc))
    elif args.markdown:
        from llmcheck.reports.files import atomic_write_text

        atomic_write_text(Path(args.markdown), ab_report.markdown(doc))
    if args.markdown != "-":
        sys.stdout.write(ab_report.table(doc))
