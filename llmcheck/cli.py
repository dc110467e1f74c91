"""The ``llmcheck`` command: ``compare`` gates a merge, ``report`` re-renders, ``checks`` lists checks,
``ab`` benchmarks two versions of a model interleaved (llmcheck.ab.cli).

Exit codes: 0 fine, 1 a regression (compare), 2 the input could not be used (a broken or foreign
report, mismatched environments, a bad threshold). Running checks is pytest's job:
``pytest --llmcheck model.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from llmcheck.reports.compare import CompareError, Rules, Threshold
from llmcheck.reports.json_report import ReportError
from llmcheck.reports.plain import printable
from llmcheck.settings import fraction

CONFIG_KEYS = {
    "fail_on": 'thresholds, e.g. ["latency.p50:+5%"]',
    "alpha": "significance level",
    "min_effect": 'minimum relative shift of a sample series, e.g. 0.05 or "5%"',
    "refuse_env": 'environment fields that must match, e.g. ["torch", "cuda", "device"]',
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ReportError, CompareError) as exc:
        print(printable(f"llmcheck {args.command}: {exc}").replace("\n", " "), file=sys.stderr)
        return 2
    except (TypeError, KeyError, AttributeError, ValueError, RecursionError) as exc:
        if args.command not in ("compare", "report"):
            raise
        # A report that passed validation but still holds what the renderers cannot read: exit 2
        # ("cannot judge"), never 1 ("regression"), and one line rather than a traceback.
        files = " and ".join(str(getattr(args, k)) for k in ("base", "head", "run_json") if hasattr(args, k))
        print(printable(f"llmcheck {args.command}: cannot read {files}: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `llmcheck checks | head`: the reader left, which is fine
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmcheck",
        description="Compare, render and list llmcheck reports and "
        "checks. Run the checks themselves with: pytest --llmcheck MODEL.py",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="compare two JSON reports; exit 1 on a regression")
    c.add_argument("base", help="the baseline report (e.g. from the main branch)")
    c.add_argument("head", help="the report to judge")
    c.add_argument("--markdown", nargs="?", const="-", metavar="PATH", help="write Markdown (to stdout, or to PATH)")
    c.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write the comparison as JSON (stdout or PATH)")
    c.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="CHECK.METRIC:±N[%]",
        help="threshold, e.g. latency.p50:+5%% (an increase over 5%% regresses); repeatable",
    )
    c.add_argument("--alpha", type=float, help="significance level of the Mann-Whitney U test (default 0.01)")
    c.add_argument(
        "--min-effect", type=_min_effect, help="minimum relative median shift of sample series (default 5%%)"
    )
    c.add_argument("--allow-env-mismatch", action="store_true", help="compare reports from different torch/CUDA/device")
    c.add_argument("--config", type=Path, help="pyproject.toml with [tool.llmcheck.compare] (default: nearest one)")
    c.add_argument("--allow-unsigned", action="store_true", help="accept reports without their content digest")
    c.set_defaults(run=_compare)
    r = sub.add_parser("report", help="re-render a JSON report")
    r.add_argument("run_json", metavar="RUN.json")
    r.add_argument("--html", metavar="OUT.html", help="write the HTML report")
    r.add_argument("--markdown", nargs="?", const="-", metavar="PATH", help="write a Markdown summary")
    r.add_argument("--allow-unsigned", action="store_true", help="accept a report without its content digest")
    r.set_defaults(run=_report)
    k = sub.add_parser("checks", help="list the registered checks and their parameters")
    k.add_argument("name", nargs="?", metavar="NAME", help="only this check")
    fmt = k.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="as JSON")
    fmt.add_argument("--markdown", action="store_true", help="as Markdown: each check's parameter table")
    k.add_argument(
        "--write-docs",
        metavar="DOCS",
        type=Path,
        help="rewrite the generated parameter tables under DOCS (docs/checks/NAME.md, docs/running-and-settings.md)",
    )
    k.set_defaults(run=_checks)
    from llmcheck.ab import cli as ab_cli

    ab_cli.add_parser(sub)
    ab_cli.add_ci_parser(sub)  # llmcheck ci: the pull-request gate (statuses vs main, A/B vs the merge base)
    from llmcheck.reports import history

    history.add_parser(sub)  # llmcheck history: stored reports of main over commits, change points flagged
    return parser


def _min_effect(text: str) -> float:
    return fraction(text, "--min-effect")


def _emit(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text)
    else:
        from llmcheck.reports.files import atomic_write_text

        atomic_write_text(Path(target), text)


def _compare(args) -> int:
    from llmcheck.reports import compare, json_report, markdown

    rules = load_rules(args.config or _nearest_pyproject(), args)
    base = json_report.read(args.base, allow_unsigned=args.allow_unsigned)
    head = json_report.read(args.head, allow_unsigned=args.allow_unsigned)
    result = compare.compare(base, head, rules)
    if args.json:
        _emit(args.json, json.dumps(result, indent=1, allow_nan=False) + "\n")
    if args.markdown:
        _emit(args.markdown, markdown.comparison(result))
    if "-" not in (args.json, args.markdown):
        sys.stdout.write(printable(table(result)))
    return 1 if result["regressions"] else 0


def load_rules(pyproject: Path | None, args) -> Rules:
    """Defaults, then ``[tool.llmcheck.compare]``, then the command line."""
    rules = Rules(allow_env_mismatch=args.allow_env_mismatch)
    table = _config_table(pyproject) if pyproject else {}
    source = f"[tool.llmcheck.compare] in {pyproject}"
    unknown = set(table) - set(CONFIG_KEYS)
    if unknown:
        raise CompareError(
            f"unknown key(s) {sorted(unknown)} in {source}; valid: "
            + "; ".join(f"{k} ({v})" for k, v in CONFIG_KEYS.items())
        )
    fail_on = table.get("fail_on", [])
    for spec in [fail_on] if isinstance(fail_on, str) else fail_on:
        rules.thresholds.append(Threshold.parse(str(spec), source))
    try:
        rules.alpha = float(table.get("alpha", rules.alpha))
        rules.min_effect = fraction(
            str(table.get("min_effect", rules.min_effect)), "min_effect in [tool.llmcheck.compare]"
        )
    except ValueError as exc:
        raise CompareError(f"{source}: {exc}") from None
    rules.refuse_env = tuple(table.get("refuse_env", rules.refuse_env))
    rules.thresholds += [Threshold.parse(spec) for spec in args.fail_on]
    rules.alpha = args.alpha if args.alpha is not None else rules.alpha
    rules.min_effect = args.min_effect if args.min_effect is not None else rules.min_effect
    if not 0 < rules.alpha < 1 or rules.min_effect < 0:
        raise CompareError(
            f"alpha must be in (0, 1) and min_effect >= 0; got alpha={rules.alpha}, min_effect={rules.min_effect}"
        )
    return rules


def _nearest_pyproject() -> Path | None:
    here = Path.cwd().resolve()
    return next((d / "pyproject.toml" for d in (here, *here.parents) if (d / "pyproject.toml").is_file()), None)


def _config_table(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f).get("tool", {}).get("llmcheck", {}).get("compare", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CompareError(f"cannot read {path}: {exc}") from None


def table(result: dict[str, Any]) -> str:
    """The comparison as a terminal table: rows that matter, then a count of the other metric changes."""
    order = ("regression", "inconclusive", "within noise", "improvement", "new")
    rows = sorted((r for r in result["rows"] if r["verdict"] in order), key=lambda r: order.index(r["verdict"]))
    lines = [
        f"llmcheck compare: {result['paired']} paired checks, "
        + (f"{result['regressions']} REGRESSION(S)" if result["regressions"] else "no regressions")
    ]
    lines += [f"  warning: {w}" for w in result["warnings"]]
    width = max([len(r["id"]) for r in rows] + [5])
    for r in rows:
        what = f"{r['kind']} {r['name']}".strip()
        values = f"{_short(r['base'])} -> {_short(r['head'])}  " if r["kind"] in ("samples", "metric") else ""
        lines.append(f"  {r['verdict']:<12} {r['id']:<{width}}  {what:<24} {values}{r['note']}")
    other = sum(r["verdict"] == "changed" for r in result["rows"])
    if other:
        lines.append(f"  ({other} other metric change(s), not gated; --markdown or --json lists them)")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _report(args) -> int:
    from llmcheck.reports import html, json_report, markdown

    document = json_report.read(args.run_json, allow_unsigned=args.allow_unsigned)
    if not args.html and not args.markdown:
        print("llmcheck report: nothing to do; pass --html OUT.html and/or --markdown [PATH]", file=sys.stderr)
        return 2
    if args.html:
        links = os.path.relpath(Path(args.run_json).resolve().parent, Path(args.html).resolve().parent)
        path = html.write(args.html, document, source=Path(args.run_json).name, links_from=links)
        print(f"llmcheck: HTML report written to {path}", file=sys.stderr)
    if args.markdown:
        _emit(args.markdown, markdown.run(document))
    return 0


def _checks(args) -> int:
    from llmcheck.registry import RegistryError, load_checks
    from llmcheck.reports import check_docs
    from llmcheck.settings import GLOBAL_PARAMS, check_params

    try:
        checks = load_checks()
    except RegistryError as exc:
        print(f"llmcheck checks: {exc}", file=sys.stderr)
        return 2
    if args.write_docs:
        wanted = check_docs.expected(checks, check_params, GLOBAL_PARAMS)
        for path in check_docs.write(args.write_docs, wanted):
            print(f"llmcheck checks: rewrote {path}", file=sys.stderr)
        return 0
    if args.name:
        if args.name not in checks:
            print(f"llmcheck checks: no check named {args.name!r}; have {', '.join(checks)}", file=sys.stderr)
            return 2
        checks = {args.name: checks[args.name]}
    if args.markdown:
        print("\n".join(check_docs.check_section(c, check_params(c)) for c in checks.values()), end="")
        return 0
    listing = [
        {
            "name": c.name,
            "family": c.family,
            "summary": c.summary,
            "needs": sorted(c.needs),
            "params": {
                n: {
                    "type": p.type.__name__,
                    "default": p.default,
                    "doc": p.doc,
                    "minimum": p.minimum,
                    "maximum": p.maximum,
                    "choices": list(p.choices) if p.choices else None,
                }
                for n, p in check_params(c).items()
            },
        }
        for c in checks.values()
    ]
    if args.json:
        print(json.dumps(listing, indent=1, default=repr))
        return 0
    for c in listing:
        needs = f"  (needs {', '.join(c['needs'])})" if c["needs"] else ""
        print(f"{c['name']}  [{c['family']}]{needs}\n    {c['summary']}")
        for name, p in c["params"].items():
            bounds = "".join(
                [
                    f", >= {p['minimum']:g}" if p["minimum"] is not None else "",
                    f", <= {p['maximum']:g}" if p["maximum"] is not None else "",
                    f", one of {p['choices']}" if p["choices"] else "",
                ]
            )
            print(f"    {c['name']}.{name} = {p['default']!r}  ({p['type']}{bounds})  {p['doc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
