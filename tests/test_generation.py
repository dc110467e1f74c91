"""The generation check: a model stuck on one token, non-finite logits on longer sequences and
batch-dependent outputs each fail with the prompt, step and figures (state carried between calls is
eval's diagnosis: generation is inconclusive there); the clean model passing is in
test_data_check.py, and the judgements' pure parts are tested here."""

from __future__ import annotations

import pytest
from model_sources import variant

from llmcheck.checks.generation.check import CHECK, judge
from llmcheck.checks.generation.loop import longest_repeat
from llmcheck.settings import Params

HEAD = "        return self.head(x)"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers inherit it: no BLAS threads spinning on 2 cores


def generation(run_llmcheck, source, *args):
    return run_llmcheck(source, "-k", "generation", *args).by_check["generation"]


def test_a_model_that_repeats_one_token_fails_with_a_loop_and_no_end_token(run_llmcheck):
    source = variant(HEAD, "        return self.head(x) + 30.0 * F.one_hot(torch.tensor(7), V)  # stuck on token 7")
    found = generation(run_llmcheck, source, "--llmcheck-set", "generation.eos_token_id=3")
    assert found["status"] == "failed"
    assert (
        "degenerate loop in sampled generation for prompt 0: token 7 repeated 24 times in a row from new token 0 "
        "(limit 8)"
    ) in found["message"]
    assert (
        "sampled generation for prompt 2 produced the end token 3 never (limit 24 of 24 new tokens)" in found["message"]
    )
    assert found["metrics"]["sampled"]["tokens"][0] == [7] * 24


def test_non_finite_logits_on_longer_sequences_fail_generation_at_their_step(run_llmcheck):
    source = variant(
        "        for block in self.blocks:",
        "        x = x.masked_fill((torch.arange(idx.shape[1]) >= 12)[:, None], float('nan'))\n"
        "        for block in self.blocks:",
    )
    found = generation(run_llmcheck, source)
    assert found["status"] == "failed"
    assert (
        "non-finite logits in greedy generation at new token 5 for prompt 0 (64 values; sequence length 13)"
        in found["message"]
    )  # 8 prompt tokens + 5 new: position 12 is the first NaN one
    assert "non-finite logits in sampled generation at new token 5" in found["message"]


def test_state_carried_between_calls_leaves_generation_inconclusive_pointing_at_eval(run_llmcheck):
    source = variant(
        HEAD,
        "        self.calls = getattr(self, 'calls', 0) + 1  # the bug: a counter that is never reset\n"
        "        return self.head(x) + 3.0 * torch.sin(self.calls + torch.arange(V))",
    )
    found = generation(run_llmcheck, source)  # two identical forwards differ: eval's diagnosis (issue 14.6)
    assert found["status"] == "skipped"
    assert found["message"].startswith("inconclusive: the forward is not deterministic in eval mode")
    assert "first at module <root> (TinyLM); one seed does not reproduce them: state carried" in found["message"]
    assert found["message"].endswith("the eval check diagnoses this")


def test_outputs_that_depend_on_the_other_prompts_fail_batched_equals_one_by_one(run_llmcheck):
    source = variant(
        "        for block in self.blocks:",
        "        x = x + x.mean(0, keepdim=True)  # the bug: statistics over the batch\n"
        "        for block in self.blocks:",
    )
    found = generation(run_llmcheck, source)
    assert found["status"] == "failed"
    assert "batched generation differs from one prompt at a time: prompt " in found["message"]
    assert "at new token 0, max |Δ logits| = " in found["message"] and "> atol 0.0001" in found["message"]
    assert found["metrics"]["batched"]["max_abs_diff"] > 1e-4


def test_longest_repeat_finds_the_n_gram_repeated_most_in_a_row():
    assert longest_repeat([1, 2, 3, 4], 3)["repeats"] == 1
    assert longest_repeat([5, 7, 7, 7, 7, 2], 3) == {"repeats": 4, "n": 1, "start": 1, "gram": [7]}
    assert longest_repeat([9, 1, 2, 1, 2, 1, 2, 1, 2, 3], 3) == {"repeats": 4, "n": 2, "start": 1, "gram": [1, 2]}


def _metrics(eos_at: list) -> dict:
    run = {
        "tokens": [[1, 2, 3]] * 2,
        "eos_at": eos_at,
        "nonfinite": None,
        "repeats": [{"repeats": 1, "n": 1, "start": 0, "gram": [1]}] * 2,
    }
    return {
        "prompts": 2,
        "prompt_len": 4,
        "max_new_tokens": 16,
        "config_eos": None,
        "greedy": run,
        "sampled": run,
        "seed_mismatch": None,
        "batched": {"max_abs_diff": 0.0, "row": 0, "step": 0, "token_mismatch": False},
    }


def test_the_end_token_passes_within_its_limit_and_fails_past_it():
    p = Params({**{k: v.default for k, v in CHECK.params.items()}, "eos_token_id": 2, "eos_within": 8})
    passed = judge(_metrics([1, 5]), p)
    assert passed.status == "passed" and "end token 2 reached within 8 new tokens" in passed.message
    failed = judge(_metrics([1, 12]), p)
    assert failed.status == "failed"
    assert (
        "sampled generation for prompt 1 produced the end token 2 only at new token 12 (limit 8 of 16 new tokens)"
    ) in failed.message
