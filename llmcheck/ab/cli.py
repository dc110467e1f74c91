"""``llmcheck ab BASE HEAD``: the command line of A/B benchmarking (the engine is `llmcheck.ab.engine`).

Exit codes: 0 no regression, 1 a regression (for CI), 2 a usage error or a configuration that
could not be measured (a model missing from BASE, a model file that does not load).
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from llmcheck.ab import engine as ab
from llmcheck.ab import runner
from llmcheck.ab import sources as ab_sources
from llmcheck.ab.runner import Request, settings_layers
from llmcheck.reports import ab_report
from llmcheck.settings import (
    Layer,
    SettingsError,
    UsageError,
    duration,
    fraction,
)


def add_parser(sub) -> None:
    a = sub.add_parser(
        "ab",
        help="A/B benchmark two versions of a model, interleaved; exit 1 on a regression",
        description="Measure BASE and HEAD in alternating turns of a pair of worker processes (a fresh pair "
        "every --ab-recycle rounds) and judge the ratio HEAD/BASE per configuration over the process pairs. "
        "BASE and HEAD are model files, model folders or "
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
        help="of each turn's samples; a side's value in a round is its least disturbed turn (default %(default)s)",
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
    a.add_argument(
        "--ab-repeats",
        type=int,
        default=ab.Options.repeats,
        metavar="N",
        help="turns per side in a round, in the order A B B A B A A B (default %(default)s)",
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
    if args.ab_recycle < 1 or args.ab_repeats < 1:
        raise UsageError(f"--ab-recycle {args.ab_recycle}, --ab-repeats {args.ab_repeats}: each at least 1")
    return ab.Options(
        budget_s=duration(args.ab_budget),
        precision=fraction(args.ab_precision, "--ab-precision"),
        threshold=fraction(args.threshold, "--threshold"),
        seed=args.seed,
        min_pairs=args.min_pairs,
        statistic=args.ab_statistic,
        recycle=args.ab_recycle,
        repeats=args.ab_repeats,
    )


def main(args) -> int:
    try:
        opts = options(args)
        request = Request(args.check, args.metric or "", tuple(args.model), args.keyword, args.configs, args.quiet)
        request.series()
        layers = settings_layers(args.check, args.set)
        with ExitStack() as stack:
            sources = {
                label: ab_sources.resolve(spec, stack) for label, spec in (("BASE", args.base), ("HEAD", args.head))
            }
            doc = measure(request, opts, layers, sources)
    except (UsageError, SettingsError, ab_sources.SourceError) as exc:
        print(f"llmcheck ab: {exc}", file=sys.stderr)
        return 2
    _write(args, doc)
    return 1 if doc["summary"].get("regression") else (2 if doc["summary"].get("error") else 0)


def measure(request: Request, opts: ab.Options, layers: list[Layer], sources: dict) -> dict[str, Any]:
    """The A/B document of HEAD's models against BASE's (sources: label -> ab_sources.Source)."""
    done = runner.run_models(request, opts, layers, sources)
    return ab_report.build(
        check=request.check,
        metric=request.series(),
        statistic=opts.statistic,
        rounds=done.rounds,
        base=_side(sources["BASE"]),
        head=_side(sources["HEAD"]),
        options=dict(opts.__dict__),
        results=done.results,
        environment=done.environment,
        producer=_producer(),
        started=done.started,
        finished=done.finished,
    )


def _side(source: ab_sources.Source) -> dict[str, Any]:
    return {"spec": source.spec, "path": str(source.path), "commit": source.commit}


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


def add_ci_parser(sub) -> None:
    c = sub.add_parser(
        "ci",
        help="gate a pull request: check statuses against main's report, performance by an A/B run against "
        "the merge base; one Markdown comment; exit 1 on a gated regression",
        description="Run the checks on HEAD (pytest --llmcheck, JSON report) and compare their statuses with main's "
        "stored report (or with a run on BASE); then measure BASE and HEAD interleaved with llmcheck ab. Writes "
        "one Markdown comment holding both. Exit 1 on a gated regression, 2 when HEAD could not be judged.",
    )
    c.add_argument("models", nargs="+", metavar="MODEL", help="model files or folders, as for pytest --llmcheck")
    c.add_argument("--base-ref", required=True, metavar="REF", help="BASE: the merge base of the pull request")
    c.add_argument(
        "--main-report",
        metavar="PATH",
        help="the JSON report main's last run stored; without it (or when the file is missing) the suite runs on BASE",
    )
    c.add_argument("--ab-budget", default="150s", metavar="TIME", help="A/B wall time, all models (default 150s)")
    c.add_argument(
        "--min-effect", default="5%", metavar="FRACTION", help="smallest A/B change that counts (default 5%%)"
    )
    c.add_argument(
        "--gate",
        default="all",
        metavar="CHECKS",
        help="checks or families whose regressions block, comma-separated (default all; none: report only)",
    )
    c.add_argument("--ab-check", choices=sorted(ab.METRICS), default="latency", help="the A/B check (default latency)")
    c.add_argument("--ab-set", action="append", default=[], metavar="KEY=VALUE", help="an A/B setting (repeatable)")
    c.add_argument("--ab-select", default="", metavar="TERMS", help="A/B configurations, as llmcheck ab -k")
    c.add_argument("--ab-precision", default="2%", metavar="FRACTION", help="A/B precision stop (default 2%%)")
    c.add_argument("--ab-min-pairs", type=int, default=ab.Options.min_pairs, help="A/B process pairs (default 5)")
    c.add_argument("--ab-recycle", type=int, default=ab.Options.recycle, metavar="K", help="as llmcheck ab")
    c.add_argument(
        "--pytest-args", default="", metavar="ARGS", help="more arguments for the suite runs, e.g. '-k eval'"
    )
    c.add_argument("--out", default="llmcheck-ci", metavar="DIR", help="reports, A/B documents, ci.json, comment.md")
    c.add_argument("-q", "--quiet", action="store_true", help="no A/B progress lines")
    c.set_defaults(run=ci_main)


def ci_main(args) -> int:
    from llmcheck.ab import ci as ab_ci
    from llmcheck.reports import ci_comment

    started, out = time.monotonic(), Path(args.out)
    try:
        if args.ab_min_pairs < 3 or args.ab_recycle < 1:
            raise UsageError(f"--ab-min-pairs {args.ab_min_pairs} (>= 3), --ab-recycle {args.ab_recycle} (>= 1)")
        opts = ab.Options(
            budget_s=duration(args.ab_budget),
            precision=fraction(args.ab_precision, "--ab-precision"),
            threshold=fraction(args.min_effect, "--min-effect"),
            min_pairs=args.ab_min_pairs,
            recycle=args.ab_recycle,
        )
        gate = ab_ci.parse_gate(args.gate)
        args.models = [_inside(m) for m in args.models]
        with ExitStack() as stack:
            base_dir, base_commit, _ = ab_ci.base_checkout(args.base_ref, stack)
            head_commit = ab_sources.git(["rev-parse", "HEAD"], Path.cwd())
            head = ab_ci.run_suite("HEAD", args.models, out / "head-report.json", args.pytest_args)
            checks = _ci_checks(args, head, base_dir, base_commit, gate, opts.threshold)
            docs = _ci_ab(args, opts, base_dir, base_commit, out)
    except (UsageError, SettingsError, ab_sources.SourceError) as exc:
        print(f"llmcheck ci: {exc}", file=sys.stderr)
        return 2
    ab_gated = "all" in gate or args.ab_check in gate
    blocking = sum(r["blocking"] for r in checks.get("rows", [])) + sum(
        ab_gated and r["verdict"] == "regression" for d in docs if "results" in d for r in d["results"]
    )
    verdict = "error" if checks.get("error") and not blocking else ("fail" if blocking else "pass")
    doc = {
        "schema": "llmcheck-ci",
        "schema_version": "1.0",
        "verdict": verdict,
        "blocking": blocking,
        "base": {"ref": args.base_ref, "commit": base_commit},
        "head": {"commit": head_commit},
        "gate": gate,
        "options": {"ab_budget_s": opts.budget_s, "min_effect": opts.threshold, "ab_check": args.ab_check},
        "checks": checks,
        "ab": docs,
        "duration_s": time.monotonic() - started,
    }
    ab_ci.write_json(out / "ci.json", doc)
    text = ci_comment.markdown(doc)
    (out / "comment.md").write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return {"pass": 0, "fail": 1}.get(verdict, 2)


def _inside(model: str) -> str:
    """``model`` relative to the current folder, which BASE's checkout mirrors; an outside path has no BASE."""
    path = Path(model)
    if not path.is_absolute():
        return model
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        raise UsageError(f"{model}: outside {Path.cwd()}, so BASE's checkout has no version of it") from None


def _ci_checks(args, head, base_dir: Path, base_commit: str, gate: list[str], min_effect: float) -> dict[str, Any]:
    """The status half: HEAD's report compared with main's stored one, or with a run on BASE."""
    from llmcheck.ab import ci as ab_ci
    from llmcheck.reports import compare, json_report
    from llmcheck.results import FAILING

    stored = Path(args.main_report) if args.main_report else None
    against, notes = f"a run on BASE {base_commit[:10]}", []
    if not head.written:
        return {
            "against": against,
            "error": f"the suite wrote no report on HEAD (exit {head.returncode}): {head.output}",
        }
    head_doc = json_report.read(head.report)
    if stored is not None and stored.is_file():
        base_doc = json_report.read(stored)
        commit = (base_doc.get("environment") or {}).get("git_commit")
        against = f"main's stored report {args.main_report}" + (f" (commit {str(commit)[:10]})" if commit else "")
    else:
        notes += [f"no stored report at {args.main_report}: the suite ran on BASE instead"] if stored else []
        present = [m for m in args.models if (base_dir / m).exists()]
        base = ab_ci.run_suite("BASE", present, Path(args.out) / "base-report.json", args.pytest_args, base_dir)
        if present and not base.written:
            error = f"the suite wrote no report on BASE (exit {base.returncode}): {base.output}"
            return {"against": against, "error": error}
        base_doc = json_report.read(base.report) if present else {**head_doc, "results": []}
    comparison = compare.compare(base_doc, head_doc, compare.Rules(min_effect=min_effect, allow_env_mismatch=True))
    kept = ("environments differ", "machines differ", "the BASE run", "the HEAD run")
    summary: dict[str, int] = {}
    for r in head_doc["results"]:
        summary[r["status"]] = summary.get(r["status"], 0) + 1
    before = {r["id"]: r["status"] for r in base_doc["results"]}
    return {
        "against": against,
        "error": None,
        "rows": ab_ci.status_rows(comparison, head_doc, gate),
        "still_failing": [
            r["id"] for r in head_doc["results"] if r["status"] in FAILING and before.get(r["id"]) in FAILING
        ],
        "warnings": notes + [w for w in comparison["warnings"] if w.startswith(kept)],
        "head_summary": summary,
        "pytest_exit": head.returncode,
    }


def _ci_ab(args, opts: ab.Options, base_dir: Path, base_commit: str, out: Path) -> list[dict[str, Any]]:
    """The performance half: per model path, llmcheck ab of BASE's version against HEAD's."""
    from llmcheck.ab import ci as ab_ci

    docs, deadline = [], time.monotonic() + opts.budget_s
    for i, model in enumerate(args.models):
        base_path, head_path = base_dir / model, (Path.cwd() / model).resolve()
        if not base_path.exists():
            docs.append({"path": model, "error": f"not in BASE {base_commit[:10]}: a new model, nothing to compare"})
            continue
        share = max((deadline - time.monotonic()) / (len(args.models) - i), 1.0)
        sources = {
            "BASE": ab_sources.Source(f"git:{base_commit[:10]}:{model}", base_path, base_commit),
            "HEAD": ab_sources.Source(model, head_path),
        }
        request = Request(args.ab_check, "", (), args.ab_select, "", args.quiet)
        try:
            doc = measure(request, replace(opts, budget_s=share), settings_layers(args.ab_check, args.ab_set), sources)
        except (UsageError, SettingsError) as exc:
            docs.append({"path": model, "error": str(exc)})
            continue
        ab_ci.write_json(out / f"ab-{i}.json", doc)
        docs.append(doc)
    return docs
