"""Work is planned from the model's measured step cost within each check's budget_s, never below the
statistical floor its judgement needs; when the floor does not fit, the check says so.

The planning functions are driven with a target whose costs are already measured (no torch), the
leak check end to end on a model whose forward sleeps, so its step cost has a known lower bound.
"""

from __future__ import annotations

import json

import pytest
from model_sources import CLEAN, variant

from llmcheck.measuring import budget
from llmcheck.settings import Params


class FakeTarget:
    """A target whose step costs were measured already: planning reads them, nothing runs."""

    name, settings = "tiny", {"seed": 0}

    def __init__(self, forward_s=0.01, train_step_s=0.03, tokens=32, seq_len=16, **process):
        key = json.dumps([self.name, dict(self.settings)], sort_keys=True, default=str)
        measured = {"forward_s": forward_s, "train_step_s": train_step_s, "build_s": 0.1, "tokens": tokens}
        self.step_costs = {key: {**measured, "seconds": 0.0, "built_s": 0.0, **process}}
        self.seq_len = seq_len

    def shape(self, batch_size=None, seq_len=None):
        return batch_size or 2, seq_len or self.seq_len


class FakeContext:
    def __init__(self, target):
        self.target, self.heartbeats = target, []

    def progress(self, **info):
        self.heartbeats.append(info)


def params(**values) -> Params:
    return Params({"timeout": 300.0, **values})


# -- the planner ---------------------------------------------------------------------------------
def test_the_wanted_amount_is_planned_when_the_budget_affords_it():
    found = budget.plan(None, "iterations", 0.01, 10, 60, 60.0, fixed_s=1.0, check="leak")
    assert (found.amount, found.fits, found.cut) == (60, True, False)
    assert found.sentence() == "planned 60 iterations in 60 s budget (10 ms each)"


def test_a_budget_that_affords_less_cuts_the_amount_and_says_what_it_bought():
    found = budget.plan(
        None, "iterations", 0.5, 10, 60, 12.0, fixed_s=2.0, check="leak", sensitivity="smallest leak ≈ 3 KiB"
    )
    assert (found.amount, found.fits, found.cut) == (20, True, True)  # (12 - 2) / 0.5
    assert found.sentence() == "planned 20 of 60 iterations in 12 s budget (0.5 s each): smallest leak ≈ 3 KiB"
    assert found.to_json()["estimate_s"] == pytest.approx(12.0)


def test_a_floor_that_does_not_fit_is_inconclusive_and_names_the_setting_to_raise():
    found = budget.plan(None, "iterations", 0.8, 10, 60, 5.0, check="leak")
    assert not found.fits and found.amount == 10
    assert found.inconclusive() == (
        "inconclusive: needs at least 10 iterations of 0.8 s = 8 s > budget 5 s (budget_s 5 s); raise leak.budget_s"
    )


def test_without_a_measured_cost_the_wanted_amount_is_planned():
    found = budget.plan(None, "examples", None, 10, 40, 1.0, check="fuzz")
    assert (found.amount, found.fits) == (40, True)


def test_a_budget_never_plans_past_eighty_percent_of_the_timeout():
    assert budget.allowed(params(budget_s=60.0, timeout=50.0)) == (40.0, "80% of timeout 50 s")
    assert budget.allowed(params(budget_s=10.0)) == (10.0, "budget_s 10 s")


def test_a_sweep_keeps_the_longest_prefix_of_sizes_that_fits():
    found = budget.plan_prefix(None, "batch sizes", [1.0, 2.0, 4.0, 8.0], 1, 8.0, fixed_s=0.5, check="throughput")
    assert (found.amount, found.fits, found.cut) == (3, True, True)
    assert not budget.plan_prefix(None, "batch sizes", [9.0, 10.0], 1, 8.0, check="throughput").fits


def test_costs_grow_with_the_per_token_slope_of_two_timed_forwards():
    costs = {"forward_s": 0.1, "tokens": 32, "forward_long_s": 0.16, "tokens_long": 128, "train_step_s": 0.3}
    assert budget.forward_at(costs, 16) == 0.1  # small calls are overhead-bound: never below the measured
    assert budget.forward_at(costs, 128) == pytest.approx(0.16)
    assert budget.forward_at(costs, 1024) == pytest.approx(0.1 + 0.06 / 96 * 992)
    assert budget.train_at(costs, 128) == pytest.approx(0.3 + 3 * 0.06)  # the optimizer step does not grow
    one = {"forward_s": 0.1, "tokens": 32}  # one timed forward: linear in the tokens
    assert budget.forward_at(one, 128) == pytest.approx(0.4)


def test_a_step_is_timed_after_a_warm_up_and_a_slow_step_only_once(monkeypatch):
    import time

    monkeypatch.setattr(budget, "TIMING_CAP_S", 0.05)
    calls = []
    assert budget._timed(lambda: calls.append(time.sleep(0.001)), lambda: None) < 0.05
    assert len(calls) == 1 + budget.TIMED_CALLS
    calls.clear()
    assert budget._timed(lambda: calls.append(time.sleep(0.06)), lambda: None) >= 0.06
    assert len(calls) == 2  # a warm-up and one timed call: a 124M-parameter step is not paid four times


# -- each check's plan, from measured costs ------------------------------------------------------
def test_latency_raises_max_time_to_reach_its_floor_of_samples_on_a_slow_forward():
    from llmcheck.checks import latency
    from llmcheck.measuring.timing import Plan

    ctx = FakeContext(FakeTarget(forward_s=0.5))
    plan, found = latency.fit(ctx, params(budget_s=30.0), Plan(), 32, 1)
    assert found.fits and plan.max_time_s == pytest.approx(1.25 * 10 * 0.5)  # 10 samples of 0.5 s, with margin
    assert "max_time_s 0.25 s raised to 6.25 s to reach 10 samples" in found.sentence()
    _, short = latency.fit(ctx, params(budget_s=5.0), Plan(), 32, 4)
    assert not short.fits and "raise latency.budget_s" in short.inconclusive()


def test_latency_keeps_its_defaults_on_a_fast_forward():
    from llmcheck.checks import latency
    from llmcheck.measuring.timing import Plan

    plan, found = latency.fit(FakeContext(FakeTarget(forward_s=0.001)), params(budget_s=30.0), Plan(), 32, 4)
    assert (plan.max_time_s, plan.max_samples, found.cut, found.sensitivity) == (0.25, 200, False, "")


def test_extra_measuring_processes_repeat_the_first_processs_plan(monkeypatch):
    from llmcheck.isolation import processes
    from llmcheck.registry import Check
    from llmcheck.results import Result, Verdict

    seen = []

    def extra(pool, key, index, message, params, glob):
        seen.append(message["params"])
        return Result("passed", metrics={"plan": {}}, duration_s=0.1)

    monkeypatch.setattr(processes, "run_extra", extra)
    check = Check(
        "timed", "performance", "", measure=None, judge=lambda m, p: Verdict("passed", "ok"), merge=lambda parts, p: {}
    )
    replay = {"max_time_s": 6.25, "max_samples": 54, "budget_s": 300.0}
    first = Result("passed", metrics={"plan": {"replay": replay}}, duration_s=0.1)
    message = {"params": {"processes": 3, "max_time_s": 0.25, "budget_s": 30.0}}
    p = {"processes": 3, "processes_budget_s": 100.0, "timeout": 300.0}
    assert processes.spread_over_processes(check, message, p, {}, first, None, None).status == "passed"
    assert seen == [{"processes": 3, **replay}] * 2  # run_extra sets processes = 1


def test_the_throughput_sweep_drops_the_batch_sizes_the_budget_cannot_afford():
    from llmcheck.checks import throughput
    from llmcheck.measuring.timing import Plan

    p = params(batch_sizes=[1, 4, 16, 64], budget_s=40.0, count_flops=False, parallel_workers=1, parallel_time_s=1.0)
    ctx = FakeContext(FakeTarget(forward_s=0.05, train_step_s=0.15))
    sizes, found, per_size = throughput.sweep(ctx, ctx.target, p, Plan(max_time_s=0.15), 16, True)
    assert sizes == [1, 4, 16] and found.cut  # bs 64: 10 samples of 32 x 0.15 s alone would take 60 s
    assert found.sensitivity == "batch sizes 64 not measured"
    assert per_size[16].max_time_s == pytest.approx(1.25 * 10 * 0.15 * 8)  # training step at 256 tokens


def test_generation_cuts_new_tokens_to_the_budget_but_not_below_the_loop_limit():
    from llmcheck.checks.generation.loop import plan_tokens

    p = params(prompts=3, max_repeats=8, eos_token_id=-1, eos_within=0, budget_s=10.0)
    found = plan_tokens(FakeContext(FakeTarget(forward_s=0.1)), p, 8, 32)
    assert found.cut and found.fits and 9 <= found.amount < 32
    slow = plan_tokens(FakeContext(FakeTarget(forward_s=1.0)), p, 8, 32)
    assert not slow.fits and slow.inconclusive().startswith("inconclusive: needs at least 9 new tokens per prompt")


def test_fuzz_plans_fewer_examples_on_a_slow_model_and_skips_below_its_floor():
    from llmcheck.checks import fuzz

    p = params(examples=40, max_batch_size=4, budget_s=20.0)
    assert fuzz._plan(FakeContext(FakeTarget(forward_s=0.01)), p, (1, 32)).amount == 40
    # mean example: batch 2.5 x length 16.5 = 1.29x the measured batch; a quarter more for the pinned search
    found = fuzz._plan(FakeContext(FakeTarget(forward_s=0.5)), p, (1, 32))
    assert found.cut and found.amount == 24  # 20 s / (1.25 x 0.5 s x 1.29)
    assert not fuzz._plan(FakeContext(FakeTarget(forward_s=2.0)), p, (1, 32)).fits


def test_fuzz_searches_stop_within_the_budget_not_only_within_max_seconds():
    from llmcheck.checks.fuzz import search_seconds

    # quick profile (budget 5 s): max_seconds 5 + 2.5 overshot it by half (8.3 s measured on GPT-2 small)
    assert search_seconds(params(max_seconds=5.0, budget_s=5.0)) == (4.0, 1.0)
    assert search_seconds(params(max_seconds=5.0, budget_s=20.0)) == (5.0, 2.5)  # default: max_seconds binds
    assert search_seconds(params(max_seconds=30.0, budget_s=60.0)) == (30.0, 12.0)  # full
    assert sum(search_seconds(params(max_seconds=5.0, budget_s=100.0, timeout=5.0))) <= 4.0  # 80% of the timeout


def test_distributed_is_skipped_when_its_ranks_would_not_fit_the_budget():
    from llmcheck.checks.distributed.check import plan_ranks

    p = params(world_size=2, per_rank_batch=2, budget_s=10.0, timeout=180.0)
    assert plan_ranks(FakeContext(FakeTarget(startup_s=2.0, import_s=0.5)), p).fits
    slow = plan_ranks(FakeContext(FakeTarget(startup_s=30.0, import_s=5.0)), p)
    assert not slow.fits and slow.inconclusive().endswith("raise distributed.budget_s")


def test_a_gradient_overfitting_run_cut_by_the_budget_can_pass_but_never_fail():
    from llmcheck.checks import gradient

    p = params(init_loss_rtol=0.25, min_loss_drop=0.3)
    base = {"loss": 4.2, "loss_kind": "user", "expected_init_loss": None, "trainable": 3}
    base.update(no_gradient=[], nonfinite_gradient={}, zero_gradient=[], numel={})
    cut = budget.plan(None, "overfitting steps", 2.0, 10, 50, 30.0, check="gradient").to_json()
    flat = [4.2] * 10 + [4.0]
    verdict = gradient.judge({**base, "overfit_losses": flat, "plan": cut}, p)
    assert verdict.status == "passed" and "not judged: the budget cut the run short" in verdict.message
    whole = budget.plan(None, "overfitting steps", 0.01, 10, 50, 30.0, check="gradient").to_json()
    assert gradient.judge({**base, "overfit_losses": flat, "plan": whole}, p).status == "failed"
    short = budget.plan(None, "overfitting steps", 5.0, 10, 50, 30.0, check="gradient").to_json()
    verdict = gradient.judge({**base, "plan": short}, p)
    assert verdict.status == "passed" and "overfitting not judged: inconclusive: needs at least 10" in verdict.message


def test_the_memory_search_stops_before_a_step_the_budget_cannot_afford():
    from llmcheck.checks.memory import largest_batch

    class Fits:
        def measure(self, bs, sl):
            return {"batch_size": bs, "seq_len": sl, "fits": True}

    found, tried = largest_batch(Fits(), 16, 256, lambda bs, sl: "too slow" if bs > 8 else None)
    assert found == 8 and [r["batch_size"] for r in tried] == [1, 2, 4, 8]


def test_a_training_run_plans_its_steps_from_the_batch_it_trains_on():
    from llmcheck.checks.training.check import _plan

    class Target(FakeTarget):
        def tokens(self, batch):
            return batch

    class Batch:
        def numel(self):
            return 128  # four times the measured batch

    p = params(steps=100, eval_every=20, budget_s=10.0)
    found = _plan(FakeContext(Target(forward_s=0.01, train_step_s=0.05)), p, Batch(), 0)
    assert found.unit_cost_s == pytest.approx(0.05 + 3 * 0.01 / 32 * 96) and found.amount == 71
    slow = _plan(FakeContext(Target(forward_s=0.01, train_step_s=1.0)), p, Batch(), 0)
    assert not slow.fits and "needs at least 20 training steps of 1.09 s = 21.8 s > budget 10 s" in slow.inconclusive()


# -- through the user's door ---------------------------------------------------------------------
SLOW = variant("    def forward(self, idx):\n", "    def forward(self, idx):\n        time.sleep(0.1)\n")
SLOW = variant("import torch\n", "import time\nimport torch\n", SLOW)
LEAK = ["-k", "leak", "--llmcheck-set", 'leak.phases=["inference"]', "--llmcheck-set", "leak.census_points=3"]


def test_leak_plans_fewer_iterations_on_a_slow_model_and_reports_them(run_llmcheck):
    # The forward sleeps 0.1 s: 60 iterations cannot fit in 5 s however fast the machine, and the
    # floor of 10 (about 1 s) fits however loaded it is.
    result = run_llmcheck(SLOW, *LEAK, "--llmcheck-set", "leak.warmup=1", "--llmcheck-set", "leak.budget_s=5")
    record = result.by_check["leak"]
    assert record["status"] == "passed", record["message"]
    plan = record["metrics"]["plan"]
    assert plan["unit_cost_s"] >= 0.1 and plan["cut"] and 10 <= plan["amount"] < 60
    assert record["metrics"]["iterations"] == plan["amount"] == len(record["samples"]["inference_heap_bytes"])
    assert f"planned {plan['amount']} of 60 iterations per phase in 5 s budget" in record["message"]
    assert "smallest leak detectable ≈ 1 KiB/iteration" in record["message"]
    assert record["phases"]["plan_s"] > 0.1  # the step cost was measured in this item


def test_leak_below_its_floor_is_skipped_as_inconclusive(run_llmcheck):
    result = run_llmcheck(SLOW, *LEAK, "--llmcheck-set", "leak.budget_s=0.5")
    record = result.by_check["leak"]
    assert record["status"] == "skipped"
    assert record["message"].startswith("inconclusive: needs at least 10 iterations per phase of ")
    assert record["message"].endswith("> budget 0.5 s (budget_s 0.5 s); raise leak.budget_s")


def test_the_step_cost_is_measured_once_per_worker_and_model(run_llmcheck):
    fast = [
        "--llmcheck-set",
        "leak.iterations=10",
        "--llmcheck-set",
        "gradient.overfit_steps=10",
        "--llmcheck-set",
        "gradient.min_loss_drop=0.1",
    ]
    result = run_llmcheck(CLEAN, "-k", "gradient or leak", *fast)
    first, second = result.by_check["gradient"], result.by_check["leak"]
    assert (first["status"], second["status"]) == ("passed", "passed")
    assert first["phases"]["plan_s"] > 0 and second["phases"]["plan_s"] == 0
    costs = first["metrics"]["plan"]["unit_cost_s"]
    assert costs is not None and second["metrics"]["plan"]["unit_cost_s"] is not None
