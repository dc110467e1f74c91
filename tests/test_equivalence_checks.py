"""The ways a model is actually run: compile, export, attention kernels, gradient checkpointing and
the static cache give what the eager model gives, and each check fails the bug it is for, naming
the culprit (issue 18). Clean models: the example, tiny-config Hugging Face GPT-2 and Llama."""

from __future__ import annotations

import importlib.util

import pytest
from equivalence_sources import (
    BRANCH_TWICE,
    CHECKPOINT_FORGETS_RNG,
    CHECKPOINT_SWITCH_IGNORED,
    CHECKPOINTED,
    EAGER_IGNORES_PADDING,
    HF_CLEAN,
    PER_LENGTH_CACHE,
    SKIPPED_WHEN_COMPILED,
    STATIC_CACHE_POSITIONS,
    SWITCHABLE_ATTENTION,
)

# Looked up, not imported: the workers import it, and importing it here makes the next in-process
# session (pytester restores sys.modules) fail with "cannot load module more than once per process".
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)
FIVE = "compile or export or attention or checkpointing or static-cache"


def line_of(source: str, text: str) -> int:
    """The 1-based line of ``text`` in the model file the fixture writes (dedented as written)."""
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


def results(run) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["id"].rsplit("::", 1)[-1]): r for r in run.report["results"]}


# The example's verdicts on these checks are asserted on tests/test_contract.py's run of the whole
# default suite on it (one session instead of two).


@needs_transformers
def test_tiny_hugging_face_gpt2_and_llama_pass_all_five(run_llmcheck):
    # compile's gradients on these two are left to the false-alarm benchmark: they double its cost here
    settings = ("--llmcheck-set", "compile.num_lengths=3", "--llmcheck-set", "compile.gradients=false")
    run = run_llmcheck(HF_CLEAN, "-k", f"({FIVE}) and not reduce", *settings)
    found = results(run)
    for model in ("gpt2", "llama"):
        for item in ("compile[default]", "export", "attention", "checkpointing", "static-cache"):
            assert found[model, item]["status"] == "passed", (model, item, found[model, item]["message"])
        assert (
            "eager, sdpa[math], sdpa[flash] agree at the real tokens with no, left, right padding"
            in (found[model, "attention"]["message"])
        )
        assert "via gradient_checkpointing_enable()" in found[model, "checkpointing"]["message"]
    # max_seq_len bounds the decoded length: 32 - 8 on GPT-2, the full 32 on Llama
    assert "greedy decoding of 24 tokens" in found["gpt2", "static-cache"]["message"]
    assert "greedy decoding of 32 tokens" in found["llama", "static-cache"]["message"]


def test_a_data_dependent_branch_is_a_graph_break_and_an_export_failure_at_its_line(run_llmcheck):
    settings = ("--llmcheck-set", "compile.num_lengths=3", "--llmcheck-set", "compile.gradients=false")
    found = results(run_llmcheck(BRANCH_TWICE, "-k", "(compile or export) and not reduce", *settings))
    at = f"model.py:{line_of(BRANCH_TWICE, 'if x.sum() > 0')} in forward (if x.sum() > 0:"
    # by default both are what-ifs: reported with the line, advisory, not failures
    compiled = found["tiny", "compile[default]"]
    assert compiled["status"] == "passed"  # a break costs speed, not correctness
    assert f"1 graph break(s): {at}" in compiled["message"]
    assert "a Python branch on a tensor's value" in compiled["message"]
    assert compiled["advisory"] and at in compiled["advisory"][0]
    exported = found["tiny", "export"]
    assert exported["status"] == "passed" and exported["message"].startswith("advisory, not gated")
    assert f"fails at {at}" in exported["advisory"][0] and "data-dependent" in exported["advisory"][0]
    # declared to compile with fullgraph and to be exported: the same findings fail
    fullgraph = found["tiny_gated", "compile[default]"]
    assert fullgraph["status"] == "failed" and fullgraph["message"].startswith(f"fullgraph: 1 graph break(s): {at}")
    required = found["tiny_gated", "export"]
    assert required["status"] == "failed"
    assert f"fails at {at}" in required["message"] and "static shapes fail too" in required["message"]


def test_a_step_skipped_under_compilation_fails_on_outputs_and_gradients(run_llmcheck):
    found = results(
        run_llmcheck(SKIPPED_WHEN_COMPILED, "-k", "compile and not reduce", "--llmcheck-set", "compile.num_lengths=3")
    )
    r = found["tiny", "compile[default]"]
    assert r["status"] == "failed"
    assert "compiled logits differ from eager at 4 of 4 sequence lengths (first: the run's batch" in r["message"]
    assert "parameters' compiled gradients differ from eager" in r["message"]


def test_a_python_cache_keyed_by_length_recompiles_at_every_length_over_the_budget(run_llmcheck):
    found = results(
        run_llmcheck(
            PER_LENGTH_CACHE,
            "-k",
            "compile and not reduce",
            "--llmcheck-set",
            "compile.num_lengths=4",
            "--llmcheck-set",
            "compile.gradients=false",
        )
    )
    r = found["tiny", "compile[default]"]
    assert r["status"] == "failed", r["message"]
    assert "4 recompilations of one frame across sequence lengths [3, 13, 22, 32] > budget 1" in r["message"]
    assert f"model.py:{line_of(PER_LENGTH_CACHE, 'def forward(self, idx)')} in forward" in r["message"]
    assert "size mismatch at index 1" in r["message"]


def test_an_eager_path_that_drops_the_padding_mask_fails_attention_naming_implementations_and_position(
    run_llmcheck,
):
    bad = results(run_llmcheck(EAGER_IGNORES_PADDING, "-k", "attention"))["switchable", "attention"]
    assert bad["status"] == "failed"
    # sample 0 carries 4 left pads: its first real token, position 4, already sees them under eager
    assert "left padding, float32: eager and sdpa[math], sdpa[flash] disagree; worst" in bad["message"]
    assert "at sample 0, position 4" in bad["message"]
    assert "under eager the real tokens' outputs change when the pad tokens change" in bad["message"]
    assert "right padding" not in bad["message"]  # causal attention never reaches pads on the right
    good = results(run_llmcheck(SWITCHABLE_ATTENTION, "-k", "attention"))["switchable", "attention"]
    assert good["status"] == "passed", good["message"]
    assert "eager, sdpa[math], sdpa[flash] agree at the real tokens with no, left, right padding" in good["message"]


BAG_OF_WORDS = """

@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def bag_of_words():  # no attention and no checkpointing switch
    return nn.Sequential(nn.Embedding(V, D), nn.Linear(D, V))
"""


def test_checkpointing_recomputes_blocks_with_equal_gradients_and_skips_models_without_a_switch(run_llmcheck):
    found = results(run_llmcheck(CHECKPOINTED + BAG_OF_WORDS, "-k", "checkpointing or attention"))
    r = found["tiny", "checkpointing"]
    assert r["status"] == "passed", r["message"]
    assert "via gradient_checkpointing = True on <root>" in r["message"]
    assert "re-ran during backward (in blocks)" in r["message"]
    assert "the same 23 parameters get non-zero gradients" in r["message"]
    assert found["bag_of_words", "checkpointing"]["status"] == "skipped"
    assert "no gradient checkpointing switch" in found["bag_of_words", "checkpointing"]["message"]
    assert found["bag_of_words", "attention"]["status"] == "skipped"
    assert "no switchable attention" in found["bag_of_words", "attention"]["message"]


def test_a_checkpointed_block_that_redraws_dropout_fails_naming_the_dropout(run_llmcheck):
    r = results(run_llmcheck(CHECKPOINT_FORGETS_RNG, "-k", "checkpointing"))["tiny", "checkpointing"]
    assert r["status"] == "failed"
    assert "gradients differ from those without checkpointing; worst blocks." in r["message"]
    assert "the recomputed forward draws dropout (blocks.0.drop, blocks.1.drop)" in r["message"]
    assert "preserve_rng_state=True" in r["message"]


def test_a_checkpointing_switch_the_forward_never_reads_fails(run_llmcheck):
    r = results(run_llmcheck(CHECKPOINT_SWITCH_IGNORED, "-k", "checkpointing"))["tiny", "checkpointing"]
    assert r["status"] == "failed"
    assert "recomputed nothing: no module's forward ran again during backward" in r["message"]


@needs_transformers
def test_positions_read_from_the_cache_tensors_fail_the_static_cache(run_llmcheck):
    r = results(run_llmcheck(STATIC_CACHE_POSITIONS, "-k", "static-cache"))
    r = r["llama_positions_from_cache_tensors", "static-cache"]
    assert r["status"] == "failed"
    assert "plain prompt: static-cache logits differ from the dynamic cache's at step" in r["message"]
    assert "left-padded prompt" in r["message"]


def test_a_static_cache_token_that_differs_on_a_near_tie_is_reported_not_judged():
    from llmcheck.checks.static_cache import CHECK

    probe = {
        "steps": 32,
        "logits": {"max_abs_diff": 2e-6, "step": 5, "sample": 1, "tolerance": 1e-5},
        "dynamic_tokens": [[7] * 32, [3] * 32],
        "static_tokens": [[7] * 32, [3] * 5 + [4] * 27],
        "first_diff": {"sample": 1, "step": 5, "margin": 1.5e-5, "tolerance": 1e-5},
    }
    metrics = {"new_tokens": 32, "prompt_tokens": 8, "probes": {"plain": probe}}
    tie = CHECK.judge(metrics, None)
    assert tie.status == "passed"
    assert "generated token 5 of sample 1 is 4 with the static cache, 3 with the dynamic cache" in tie.message
    assert "[a near tie, not judged]" in tie.message
    decisive = {**probe, "first_diff": {**probe["first_diff"], "margin": 0.5}}
    verdict = CHECK.judge({**metrics, "probes": {"plain": decisive}}, None)
    assert verdict.status == "failed" and "top-2 margin 0.5" in verdict.message
