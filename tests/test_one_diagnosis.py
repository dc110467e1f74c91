"""One bug, one diagnosis (issue 14, point 6): a forward that does not repeat in eval mode, or
returns NaN, fails the check whose job that is; every other check that compares forwards says
"inconclusive", points at the first module where it shows and at that check, and names no culprit
of its own. Counted as items failing with a wrong diagnosis: zero. Clean models, dropout active in
training included, still pass every gated check (no precondition false alarm)."""

from __future__ import annotations

from pathlib import Path

from model_sources import variant
from test_behaviour_checks import CACHED

from llmcheck.registry import load_checks

# Checks whose judgement compares forwards: they confirm determinism (and most, finite logits) first.
GATED = (
    "causal",
    "checkpoint",
    "distributed",
    "generation",
    "amp",
    "compression",
    "batch",
    "padding",
    "kv-cache",
    "resume",
)

# Checks that reseed every RNG before each forward they compare (train-mode dropout is fine there).
REPLAY_ONE_SEED = ("batch", "resume")

# The cached LM of the behaviour tests (it takes attention_mask and past_key_values, so padding and
# kv-cache apply) with ordinary dropout in its MLP: active in training only, as it should be.
WITH_DROPOUT = variant("nn.Linear(2 * D, D))", "nn.Linear(2 * D, D), nn.Dropout(0.1))", CACHED)

DROPOUT_IN_EVAL = variant(
    "class Block(nn.Module):",
    "class AlwaysDropout(nn.Module):\n"
    "    def __init__(self, p):\n        super().__init__()\n        self.p = p\n\n"
    "    def forward(self, x):\n        return F.dropout(x, self.p, training=True)  # the bug: ignores eval()\n\n\n"
    "class Block(nn.Module):",
    variant("nn.Dropout(0.1))", "AlwaysDropout(0.1))", WITH_DROPOUT),
)

NAN_OUTPUTS = variant(
    "class Block(nn.Module):",
    "class Log(nn.Module):\n    def forward(self, x):\n        return x.log()  # the bug: NaN for x < 0\n\n\n"
    "class Block(nn.Module):",
    variant("nn.GELU()", "Log()", WITH_DROPOUT),
)


def run(run_llmcheck, source, checks, model=""):
    # -k matches substrings of names and family marks: leave out other checks that a selected name
    # would catch (checkpointing by name, static-cache by its family kv-cache)
    others = sorted(
        n for n, c in load_checks().items() if n not in checks and any(x in n or x in c.family for x in checks)
    )
    expression = f"{model} ({' or '.join(checks)})" + "".join(f" and not {n}" for n in others)
    result = run_llmcheck(source, "-k", expression.strip())
    assert {r["check"] for r in result.report["results"]} == set(checks), result.stdout.str()
    return result.report["results"]


def wrong_diagnoses(results, diagnosers):
    """Items that fail (or error) although their check is not the one that diagnoses the bug."""
    bad = [r for r in results if r["status"] not in ("passed", "skipped") and r["check"] not in diagnosers]
    return [f"{r['check']} {r['status']}: {r['message']}" for r in bad]


def test_dropout_active_in_eval_fails_eval_alone_and_every_comparison_is_inconclusive(run_llmcheck):
    results = run(run_llmcheck, DROPOUT_IN_EVAL, ("eval", *GATED))
    assert wrong_diagnoses(results, {"eval"}) == []
    (evaluated,) = [r for r in results if r["check"] == "eval"]
    assert evaluated["status"] == "failed"
    assert "first differing module: blocks.0.mlp.3 (AlwaysDropout)" in evaluated["message"]
    for r in results:
        if r["check"] == "amp" and "CUDA only" in r["message"]:
            continue  # float16 autocast on CPU: skipped before anything runs
        if r["check"] in GATED and r["check"] not in REPLAY_ONE_SEED:
            assert r["status"] == "skipped", r
            assert r["message"].startswith("inconclusive: the forward is not deterministic in eval mode"), r
            assert "first at module blocks.0.mlp.3 (AlwaysDropout)" in r["message"], r
            assert "random numbers are drawn" in r["message"] and r["message"].endswith("the eval check diagnoses this")
    # batch and resume replay one seed before the forwards they compare, so the dropout masks repeat
    # and what they judge (independent samples, an exact resume) holds: nothing to be inconclusive about.
    assert {r["check"]: r["status"] for r in results if r["check"] in REPLAY_ONE_SEED} == {
        "batch": "passed",
        "resume": "passed",
    }


def test_nan_outputs_fail_the_finiteness_checks_and_every_comparison_is_inconclusive(run_llmcheck):
    results = run(run_llmcheck, NAN_OUTPUTS, ("gradient", "fuzz", *GATED))
    # gradient and fuzz judge finiteness; generation too (finite logits at every step).
    assert wrong_diagnoses(results, {"gradient", "fuzz", "generation"}) == []
    failed = {r["check"]: r["message"] for r in results if r["status"] == "failed"}
    assert set(failed) == {"gradient", "fuzz", "generation"}, failed
    assert "first module with a non-finite output: blocks.0.mlp.1 (Log)" in failed["gradient"]
    assert "non-finite logits in greedy generation" in failed["generation"]
    for r in results:
        if r["check"] in set(GATED) - {"generation"} and "CUDA only" not in r["message"]:
            assert r["status"] == "skipped", r
            assert r["message"].startswith("inconclusive: the forward returns non-finite logits"), r
            assert "first module with a non-finite output: blocks.0.mlp.1 (Log)" in r["message"], r
            assert r["message"].endswith("the gradient check diagnoses this"), r


def test_the_example_model_with_dropout_in_training_passes_every_gated_check(run_llmcheck):
    example = Path(__file__).resolve().parents[1] / "examples" / "tiny_gpt.py"
    results = run(run_llmcheck, example.read_text(), ("eval", *GATED), model="tiny_gpt and not finetune and")
    inconclusive = [f"{r['check']}: {r['message']}" for r in results if "inconclusive" in r["message"]]
    assert inconclusive == []
    statuses = {r["check"]: r["status"] for r in results if "CUDA only" not in r["message"]}
    # no attention_mask or cache in the example: those two do not apply
    assert statuses == {**dict.fromkeys(("eval", *GATED), "passed"), "padding": "skipped", "kv-cache": "skipped"}


def test_a_clean_cached_model_with_dropout_in_training_passes_padding_kv_cache_batch_and_resume(run_llmcheck):
    checks = ("padding", "kv-cache", "batch", "resume")
    results = run(run_llmcheck, WITH_DROPOUT, checks)
    assert {r["check"]: r["status"] for r in results} == dict.fromkeys(checks, "passed"), results
