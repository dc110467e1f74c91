"""llmcheck's latency measurement against torch.utils.benchmark.Timer on the same call, in one run.

    python benchmarks/timer_agreement.py [--rounds 10] [--seconds 0.3] [--batch-size 8]

The call is one forward of the example model (examples/tiny_gpt.py), about 1 ms on one thread.
Both timers run on one thread with the garbage collector paused, in interleaved rounds (A B B A
...) after one discarded round each, so that drift on a shared machine hits both alike. On a
machine shared with other jobs, run it as ``chrt -f 10 python benchmarks/timer_agreement.py``
(real-time priority for this one single-threaded process) so that the comparison is of the two
methods, not of other processes' time slices. Criteria:

1. medians agree within 3 %: llmcheck's per-call median vs Timer's (block time / calls per block),
   compared round by round (the two measurements of a round are back to back, so drift between
   rounds cancels): the median over rounds of llmcheck's median / Timer's median;
2. llmcheck's spread is no wider: IQR/median within a round at the same granularity (Timer's
   samples are blocks of ``number_per_run`` calls, whose averaging narrows the spread, so
   llmcheck's per-call samples are averaged in consecutive groups of that size first), the median
   over rounds so that drift between rounds is left out. Two equally good methods tie, and a tie
   then falls either way by estimation noise, so "no wider" allows 5 % of Timer's value (e.g.
   3.15 % against 3.00 %). The spread of the per-round medians (CV) is printed too;
3. timing overhead per sample under 1 % of a 1 ms call (10 µs): the whole sampling loop's cost
   per sample around a call that does nothing, inside and outside the timed region, from the
   difference between a long and a short run (fixed costs such as the garbage collection before
   sampling cancel out); the bias inside the timed region (the median no-op sample) is printed too.
Exit status 1 when a criterion fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Compare, Timer

from llmcheck.measuring import timing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def forward_call(batch_size: int):
    import tiny_gpt

    torch.manual_seed(0)
    model = tiny_gpt.tiny_gpt().eval()
    batch = torch.randint(0, 256, (batch_size, 16))

    def call():
        with torch.no_grad():
            model(batch)

    return call


def iqr_ratio(values: list[float]) -> float:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(values)


def grouped(values: list[float], size: int) -> list[float]:
    return [statistics.fmean(values[i : i + size]) for i in range(0, len(values) - size + 1, size)]


def llmcheck_round(call, seconds: float) -> timing.Measurement:
    plan = timing.Plan(max_time_s=seconds, max_samples=10**7, target_rel_ci=0.0, num_threads=1, warmup_s=0.05)
    return timing.sample(call, plan)


def timer_round(call, seconds: float, sub_label: str):
    timer = Timer(
        "call()", globals={"call": call}, num_threads=1, label="forward", sub_label=sub_label, description="torch Timer"
    )
    return timer.blocked_autorange(min_run_time=seconds)


def overhead_noop(short: int = 200, long: int = 1_200, repeats: int = 30) -> tuple[float, float]:
    """(µs per sample of the whole loop around a no-op, µs median no-op sample): the median over
    ``repeats`` of a long run minus a short one, per extra sample. The counts are those of a 1 ms
    call sampled for 0.2-1.2 s, so the loop's periodic interval checks are costed as in use."""

    def run(n):
        plan = timing.Plan(max_time_s=60, min_samples=n, max_samples=n, target_rel_ci=0.0, warmup_iters=10, warmup_s=0)
        start = time.perf_counter()
        m = timing.sample(lambda: None, plan)
        return time.perf_counter() - start - m.warmup["seconds"], m

    loops, inside = [], []
    for _ in range(repeats):
        (t_short, _), (t_long, m) = run(short), run(long)
        loops.append((t_long - t_short) / (long - short) * 1e6)
        inside.append(m.median_ms * 1e3)
    return statistics.median(loops), statistics.median(inside)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=0.2, help="per round and timer")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    call = forward_call(args.batch_size)
    llmcheck_round(call, 0.2), timer_round(call, 0.2, "warm-up")  # discarded: caches, clocks, allocator
    ours, theirs, round_ours, round_theirs, spread_ours_r, spread_theirs_r = [], [], [], [], [], []
    runs = []
    for r in range(args.rounds):
        order = ("llmcheck", "timer") if r % 4 in (0, 3) else ("timer", "llmcheck")
        for who in order:
            if who == "llmcheck":
                m = llmcheck_round(call, args.seconds)
                ours += m.samples_ms
                round_ours.append(m.median_ms)
                spread_ours_r.append(m.samples_ms)  # grouped once Timer's block size is known
                runs.append(timing.to_torch_measurement(m, "forward", f"bs={args.batch_size}", "llmcheck"))
            else:
                tm = timer_round(call, args.seconds, f"bs={args.batch_size}")
                theirs += [t * 1e3 for t in tm.times]
                round_theirs.append(tm.median * 1e3)
                spread_theirs_r.append(tm.iqr / tm.median)
                number = tm.number_per_run
                runs.append(tm)
    Compare(runs).print()
    print(
        "per-round medians (ms), llmcheck / Timer:",
        ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(round_ours, round_theirs)),
    )
    med_ours, med_theirs = statistics.median(ours), statistics.median(theirs)
    paired = statistics.median(a / b for a, b in zip(round_ours, round_theirs))
    agree = abs(paired - 1)
    spread_ours, spread_grouped, spread_theirs = iqr_ratio(ours), iqr_ratio(grouped(ours, number)), iqr_ratio(theirs)
    cv_ours, cv_theirs = (statistics.stdev(x) / statistics.fmean(x) for x in (round_ours, round_theirs))
    within_ours = statistics.median(iqr_ratio(grouped(x, number)) for x in spread_ours_r)
    within_theirs = statistics.median(spread_theirs_r)
    loop_us, bias_us = overhead_noop()
    print(
        f"call: forward of examples/tiny_gpt.py, batch {args.batch_size} x 16 tokens, 1 thread; "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per timer"
    )
    print(
        f"median, round by round: llmcheck / Timer = {paired:.4f}, a difference of {agree:.2%} (limit 3%); "
        f"pooled: llmcheck {med_ours:.4f} ms (n={len(ours)} calls), "
        f"Timer {med_theirs:.4f} ms (n={len(theirs)} blocks of {number})"
    )
    print(
        f"  llmcheck's samples averaged in groups of {number}, as Timer's blocks are: median "
        f"{statistics.median(grouped(ours, number)):.4f} ms (a block's mean carries its calls' interruptions)"
    )
    print(
        f"spread within a round (IQR/median, median over rounds): llmcheck {within_ours:.2%} in groups of {number}, "
        f"Timer {within_theirs:.2%} per block of {number} (llmcheck no wider, within 5 % of Timer's value)"
    )
    print(
        f"  pooled over rounds: llmcheck {spread_grouped:.2%} in groups ({spread_ours:.2%} per call), "
        f"Timer {spread_theirs:.2%}; "
        f"per-round medians CV: llmcheck {cv_ours:.2%}, Timer {cv_theirs:.2%}"
    )
    print(
        f"overhead per sample: {loop_us:.3f} us for the whole sampling loop around a no-op call "
        f"({loop_us / 1e3:.3%} of a 1 ms call, limit 1%); of it inside the timed region: {bias_us:.3f} us"
    )
    checks = {
        "medians within 3%": agree <= 0.03,
        "spread no wider": within_ours <= 1.05 * within_theirs,
        "overhead < 1% of 1 ms": loop_us < 10.0,
    }
    print("; ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in checks.items()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
