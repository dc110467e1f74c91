"""One bug, one diagnosis (issue 14, point 6): a forward that does not repeat in eval mode, or
returns NaN, fails the check whose job that is; every other check that compares forwards says
"inconclusive", points at the first module where it shows and at that check, and names no culprit
of its own. Counted as items failing with a wrong diagnosis: zero. Clean models, dropout active in
training included, still pass every gated check (no precondition false alarm)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from equivalence_sources import CHECKPOINTED
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
    "attention",
    "compile",
    "export",
    "static-cache",
    "checkpointing",
)

# Checks that reseed every RNG before each forward they compare (train-mode dropout is fine there).
REPLAY_ONE_SEED = ("batch", "resume", "checkpointing")

# Gated checks that do not apply to the cached LM below, with the reason they give: it has no
# Hugging Face generate() and no gradient checkpointing switch. Their gates are proven on models
# where they apply: checkpointing on the checkpointed tiny LM, static-cache on a tiny Llama.
NOT_ON_CACHED = {
    "static-cache": "no Hugging Face generate()",
    "checkpointing": "no gradient checkpointing switch",
}

# The cached LM of the behaviour tests (it takes attention_mask and past_key_values, so padding and
# kv-cache apply) with ordinary dropout in its MLP: active in training only, as it should be.
WITH_DROPOUT = variant("nn.Linear(2 * D, D))", "nn.Linear(2 * D, D), nn.Dropout(0.1))", CACHED)

# The two bugs, as module classes a model file defines before its Block.
ALWAYS_DROPOUT = (
    "class AlwaysDropout(nn.Module):\n"
    "    def __init__(self, p):\n        super().__init__()\n        self.p = p\n\n"
    "    def forward(self, x):\n        return F.dropout(x, self.p, training=True)  # the bug: ignores eval()\n\n\n"
)
LOG = "class Log(nn.Module):\n    def forward(self, x):\n        return x.log()  # the bug: NaN for x < 0\n\n\n"

DROPOUT_IN_EVAL = variant(
    "class Block(nn.Module):",
    ALWAYS_DROPOUT + "class Block(nn.Module):",
    variant("nn.Dropout(0.1))", "AlwaysDropout(0.1))", WITH_DROPOUT),
)

NAN_OUTPUTS = variant(
    "class Block(nn.Module):", LOG + "class Block(nn.Module):", variant("nn.GELU()", "Log()", WITH_DROPOUT)
)


# The gradient-checkpointed tiny LM of the equivalence tests (its Block has nn.Dropout, active in
# training only) with the same two bugs.
CHECKPOINTED_DROPOUT_IN_EVAL = variant(
    "class Block(nn.Module):",
    ALWAYS_DROPOUT + "class Block(nn.Module):",
    variant("self.drop = nn.Dropout(0.1)", "self.drop = AlwaysDropout(0.1)", CHECKPOINTED),
)
CHECKPOINTED_NAN = variant(
    "class Block(nn.Module):", LOG + "class Block(nn.Module):", variant("nn.GELU()", "Log()", CHECKPOINTED)
)

# A tiny Llama (Hugging Face generate with a static cache, gradient_checkpointing_enable, eager and
# sdpa attention: every one of the five equivalence checks applies) with each bug after its final norm.
HF_BUGS = f"""
import torch.nn as nn
import torch.nn.functional as F
import llmcheck
from transformers import LlamaConfig, LlamaForCausalLM


{ALWAYS_DROPOUT}{LOG}def llama(after_norm):
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=64, vocab_size=96,
                                         max_position_embeddings=48))
    model.model.norm = nn.Sequential(model.model.norm, after_norm)
    return model


@llmcheck.model
def llama_always_dropout():
    return llama(AlwaysDropout(0.1))


@llmcheck.model
def llama_nan():
    return llama(Log())
"""
EQUIVALENCE = ("attention", "compile", "export", "static-cache", "checkpointing")


def cuda_only(r) -> bool:
    """An item skipped on CPU before anything runs (float16 autocast, CUDA graphs)."""
    return r["status"] == "skipped" and ("CUDA only" in r["message"] or "needs a CUDA device" in r["message"])


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


def assert_eval_inconclusive(r, module):
    assert r["status"] == "skipped", r
    assert r["message"].startswith("inconclusive: the forward is not deterministic in eval mode"), r
    assert f"first at module {module}" in r["message"], r
    assert "random numbers are drawn" in r["message"] and r["message"].endswith("the eval check diagnoses this"), r


def assert_nan_inconclusive(r, module, mode="eval"):
    assert r["status"] == "skipped", r
    assert r["message"].startswith("inconclusive: the forward returns non-finite logits"), r
    assert f"NaN or inf in {mode} mode" in r["message"], r
    assert f"first module with a non-finite output: {module}" in r["message"], r
    assert r["message"].endswith("the gradient check diagnoses this"), r


def test_dropout_active_in_eval_fails_eval_alone_and_every_comparison_is_inconclusive(run_llmcheck):
    results = run(run_llmcheck, DROPOUT_IN_EVAL, ("eval", *GATED))
    assert wrong_diagnoses(results, {"eval"}) == []
    (evaluated,) = [r for r in results if r["check"] == "eval"]
    assert evaluated["status"] == "failed"
    assert "first differing module: blocks.0.mlp.3 (AlwaysDropout)" in evaluated["message"]
    for r in results:
        if cuda_only(r):
            continue
        if r["check"] in NOT_ON_CACHED:
            assert r["status"] == "skipped" and NOT_ON_CACHED[r["check"]] in r["message"], r
        elif r["check"] in GATED and r["check"] not in REPLAY_ONE_SEED:
            assert_eval_inconclusive(r, "blocks.0.mlp.3 (AlwaysDropout)")
    # batch and resume replay one seed before the forwards they compare, so the dropout masks repeat
    # and what they judge (independent samples, an exact resume) holds: nothing to be inconclusive about.
    assert {r["check"]: r["status"] for r in results if r["check"] in REPLAY_ONE_SEED} == {
        "batch": "passed",
        "resume": "passed",
        "checkpointing": "skipped",  # not applicable here: see the checkpointed model below
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
        if cuda_only(r):
            continue
        if r["check"] in NOT_ON_CACHED:
            assert r["status"] == "skipped" and NOT_ON_CACHED[r["check"]] in r["message"], r
        elif r["check"] in set(GATED) - {"generation"}:
            assert_nan_inconclusive(r, "blocks.0.mlp.1 (Log)", "train" if r["check"] == "resume" else "eval")


def test_the_example_model_with_dropout_in_training_passes_every_gated_check(run_llmcheck):
    example = Path(__file__).resolve().parents[1] / "examples" / "tiny_gpt.py"
    results = run(run_llmcheck, example.read_text(), ("eval", *GATED), model="tiny_gpt and not finetune and")
    inconclusive = [f"{r['check']}: {r['message']}" for r in results if "inconclusive" in r["message"]]
    assert inconclusive == []
    statuses = {r["check"]: r["status"] for r in results if not cuda_only(r)}
    # no attention_mask, cache, generate() or checkpointing switch in the example: those do not apply
    not_applicable = ("padding", "kv-cache", "static-cache", "checkpointing")
    assert statuses == {**dict.fromkeys(("eval", *GATED), "passed"), **dict.fromkeys(not_applicable, "skipped")}


def test_a_clean_cached_model_with_dropout_in_training_passes_the_gated_checks_that_apply(run_llmcheck):
    checks = ("padding", "kv-cache", "batch", "resume", "attention", "compile", "export", *NOT_ON_CACHED)
    results = run(run_llmcheck, WITH_DROPOUT, checks)
    assert [f"{r['check']}: {r['message']}" for r in results if "inconclusive" in r["message"]] == []
    expected = {**dict.fromkeys(checks, "passed"), **dict.fromkeys(NOT_ON_CACHED, "skipped")}
    assert {r["check"]: r["status"] for r in results if not cuda_only(r)} == expected, results


def test_checkpointing_replays_one_seed_so_dropout_in_eval_passes_it_and_nan_is_inconclusive(run_llmcheck):
    # Both steps are train-mode forwards of fresh models under one seed: dropout that ignores eval()
    # draws the same masks in both, so there is nothing wrong for checkpointing to see (eval fails).
    results = run(run_llmcheck, CHECKPOINTED_DROPOUT_IN_EVAL, ("eval", "checkpointing"))
    statuses = {r["check"]: r["status"] for r in results}
    assert statuses == {"eval": "failed", "checkpointing": "passed"}, results
    (nan,) = run(run_llmcheck, CHECKPOINTED_NAN, ("checkpointing",))
    assert_nan_inconclusive(nan, "blocks.0.mlp.1 (Log)", mode="train")


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_on_a_llama_where_all_five_equivalence_checks_apply_each_bug_is_left_to_its_own_check(run_llmcheck):
    results = run(run_llmcheck, HF_BUGS, ("eval", *EQUIVALENCE), model="llama_always_dropout and")
    assert wrong_diagnoses(results, {"eval"}) == []
    statuses = {r["check"]: r["status"] for r in results if not cuda_only(r)}
    assert statuses == {"eval": "failed", **dict.fromkeys(EQUIVALENCE, "skipped"), "checkpointing": "passed"}
    for r in results:
        if r["check"] in EQUIVALENCE and r["check"] not in REPLAY_ONE_SEED and not cuda_only(r):
            assert_eval_inconclusive(r, "model.norm.1 (AlwaysDropout)")
    for r in run(run_llmcheck, HF_BUGS, EQUIVALENCE, model="llama_nan and"):
        if not cuda_only(r):
            assert_nan_inconclusive(r, "model.norm.1 (Log)", "train" if r["check"] == "checkpointing" else "eval")
