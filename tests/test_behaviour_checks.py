"""The behaviour checks (causal, batch, padding, kv-cache, fuzz) through ``pytest --llmcheck``:
each bug is caught with its culprit named, and clean models pass."""

from __future__ import annotations

from pathlib import Path

from model_sources import select, variant

BEHAVIOUR = ("causal", "batch", "padding", "kv-cache", "fuzz")

# A small causal LM in the transformers conventions: attention_mask (positions derived from it,
# as generate() does for left padding), past_key_values in and out, use_cache.
CACHED = """
import torch
import torch.nn as nn
import torch.nn.functional as F
import llmcheck

V, D, H, T = 64, 32, 2, 32


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)

    def forward(self, x, mask, past):
        B, L, _ = x.shape
        q, k, v = (t.view(B, L, H, D // H).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, L, D)), (k, v)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = Attention()
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x, mask, past):
        a, present = self.attn(self.ln1(x), mask, past)
        x = x + a
        return x + self.mlp(self.ln2(x)), present


class CachedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        B, L = input_ids.shape
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        total = past_len + L
        if attention_mask is None:
            attention_mask = torch.ones(B, total, dtype=torch.long, device=input_ids.device)
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]
        x = self.tok(input_ids) + self.pos(pos)
        causal = torch.ones(L, total, dtype=torch.bool, device=x.device).tril(past_len)
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        # pads see themselves
        mask = mask | torch.eye(L, total, dtype=torch.bool, device=x.device).roll(past_len, dims=1)
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, mask, None if past_key_values is None else past_key_values[i])
            presents.append(present)
        logits = self.head(x)
        return (logits, tuple(presents)) if use_cache else logits


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def cached():
    return CachedLM()
"""


def run_checks(run_llmcheck, source, *checks, model=""):
    result = run_llmcheck(source, "-k", f"{model} ({select(*checks)})".strip())
    assert set(result.by_check) == set(checks), result.stdout.str()
    return result.by_check


# -- clean models pass --------------------------------------------------------------------------


def test_a_clean_cached_model_passes_every_behaviour_check(run_llmcheck):
    found = run_checks(run_llmcheck, CACHED, *BEHAVIOUR)
    assert {c: r["status"] for c, r in found.items()} == dict.fromkeys(BEHAVIOUR, "passed"), found
    assert "gradient" in found["causal"]["message"]
    assert "greedy generation of 8 tokens equal" in found["kv-cache"]["message"]
    assert "padding left/none/right" in found["fuzz"]["message"] and "seed=0" in found["fuzz"]["message"]


def test_the_example_model_passes_and_skips_what_does_not_apply(run_llmcheck):
    example = Path(__file__).resolve().parents[1] / "examples" / "tiny_gpt.py"
    found = run_checks(run_llmcheck, example.read_text(), *BEHAVIOUR, model="tiny_gpt and not finetune and")
    statuses = {c: r["status"] for c, r in found.items()}
    assert statuses == {
        "causal": "passed",
        "batch": "passed",
        "fuzz": "passed",
        "padding": "skipped",
        "kv-cache": "skipped",
    }
    assert "takes no attention_mask" in found["padding"]["message"]
    assert "takes no past_key_values" in found["kv-cache"]["message"]


# -- causal -------------------------------------------------------------------------------------


def test_an_off_by_one_causal_mask_fails_causal_naming_the_leaking_position(run_llmcheck):
    source = variant(".tril(past_len)", ".tril(past_len + 1)", CACHED)
    found = run_checks(run_llmcheck, source, "causal")["causal"]
    assert found["status"] == "failed"
    assert "logits at position 0 change when the tokens after position 0 change" in found["message"]
    assert "the logits at position 0 depend on the embedding of token 1" in found["message"]


# -- batch --------------------------------------------------------------------------------------


def test_a_mean_over_the_batch_fails_batch_naming_the_samples_and_module(run_llmcheck):
    source = variant("return x + self.mlp(x)", "return x + self.mlp(x - x.mean(dim=0, keepdim=True))")
    found = run_checks(run_llmcheck, source, "batch")["batch"]
    assert found["status"] == "failed"
    assert "eval mode: sample 1's output changes when sample 0 changes" in found["message"]
    assert "first module whose output for sample 1 changes: blocks.0.mlp.0 (Linear)" in found["message"]
    assert "the loss of sample 0 has gradient on the embeddings of sample 1" in found["message"]


def test_batch_statistics_used_only_in_training_fail_batch_in_train_mode(run_llmcheck):
    source = variant(
        "return x + self.mlp(x)", "return x + self.mlp(x - x.mean(dim=0, keepdim=True) if self.training else x)"
    )
    found = run_checks(run_llmcheck, source, "batch")["batch"]
    assert found["status"] == "failed"
    assert "train mode: sample 1's output changes when sample 0 changes" in found["message"]
    assert "eval mode" not in found["message"]


# -- padding ------------------------------------------------------------------------------------


def test_an_attention_mask_accepted_and_ignored_fails_padding(run_llmcheck):
    source = variant(
        "mask = causal[None, None] & attention_mask[:, None, None, :].bool()", "mask = causal[None, None]", CACHED
    )
    found = run_checks(run_llmcheck, source, "padding")["padding"]
    assert found["status"] == "failed"
    assert "left padding (4 pad tokens, id 0): the output of the real token at sample" in found["message"]
    assert "right padding" not in found["message"]  # a causal model never sees right pads


def test_a_model_ignoring_the_mask_entirely_is_told_so(run_llmcheck):
    source = variant(
        "def forward(self, idx):", "def forward(self, input_ids, attention_mask=None):\n        idx = input_ids"
    )
    found = run_checks(run_llmcheck, source, "padding")["padding"]
    assert found["status"] == "failed"
    assert "attention_mask has no effect on the output: it is accepted and ignored" in found["message"]


# -- kv-cache -----------------------------------------------------------------------------------


def test_positions_restarting_on_cached_steps_fail_kv_cache(run_llmcheck):
    source = variant(
        "pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]",
        "pos = (attention_mask[:, past_len:].cumsum(-1) - 1).clamp(min=0)",
        CACHED,
    )
    found = run_checks(run_llmcheck, source, "kv-cache")["kv-cache"]
    assert found["status"] == "failed"
    assert "token by token (prefill 1): logits at position 1 differ from the full forward" in found["message"]
    assert "prefill then tokens (prefill 8): logits at position 8 differ" in found["message"]
    assert "greedy generation: generated token" in found["message"]


def test_a_model_that_returns_no_cache_fails_kv_cache_saying_where_it_looked(run_llmcheck):
    source = variant("return (logits, tuple(presents)) if use_cache else logits", "return logits", CACHED)
    found = run_checks(run_llmcheck, source, "kv-cache")["kv-cache"]
    assert found["status"] == "failed"
    assert "forward(use_cache=True) returned no cache (looked for .past_key_values" in found["message"]


# -- fuzz ---------------------------------------------------------------------------------------


def test_a_short_position_table_fails_fuzz_with_the_shrunk_length(run_llmcheck):
    source = variant("self.pos = nn.Embedding(T, D)", "self.pos = nn.Embedding(T // 2, D)")
    found = run_checks(run_llmcheck, source, "fuzz")["fuzz"]
    assert found["status"] == "failed"
    assert found["message"].startswith(
        "batch_size=1, seq_len=17, tokens=lowest raises IndexError in pos (Embedding) at model.py:"
    )
    assert "seed=0 (replay: --llmcheck-set fuzz.seed=0)" in found["message"]


def test_an_off_by_one_vocabulary_fails_fuzz_on_the_highest_token(run_llmcheck):
    source = variant("self.tok = nn.Embedding(V, D)", "self.tok = nn.Embedding(V - 1, D)")
    found = run_checks(run_llmcheck, source, "fuzz")["fuzz"]
    assert found["status"] == "failed"
    assert found["message"].startswith("batch_size=1, seq_len=1, tokens=highest raises IndexError in tok (Embedding)")


def test_a_position_table_one_short_of_the_declared_limit_is_found_at_the_limit(run_llmcheck):
    source = variant("self.pos = nn.Embedding(T, D)", "self.pos = nn.Embedding(T - 1, D)")
    found = run_checks(run_llmcheck, source, "fuzz")["fuzz"]
    assert found["status"] == "failed"
    assert "seq_len=32" in found["message"] and "raises IndexError in pos (Embedding)" in found["message"]


def test_non_finite_outputs_on_token_zero_fail_fuzz(run_llmcheck):
    source = variant("x = self.tok(idx)", "x = self.tok(idx) / (idx[..., None] != 0)")
    found = run_checks(run_llmcheck, source, "fuzz")["fuzz"]
    assert found["status"] == "failed"
    assert "tokens=lowest returns" in found["message"] and "non-finite value(s) at real tokens" in found["message"]


# -- judgements on recorded numbers (pure functions, no worker) ---------------------------------


def params(check, **values):
    from llmcheck.registry import load_checks
    from llmcheck.settings import Params

    spec = load_checks()[check]
    return spec, Params({**{k: q.default for k, q in spec.params.items()}, **values})


def test_a_greedy_token_flip_on_a_near_tie_is_reported_but_not_failed():
    check, p = params("kv-cache")
    metrics = {
        "keyword": "past_key_values",
        "seq_len": 4,
        "tolerance": 1e-5,
        "probes": {"token by token": {"prefill": 1, "diff": [0.0, 1e-6, 0.0, 0.0]}},
        "with_cache": [[3, 5]],
        "without_cache": [[3, 6]],
        "first_diff_step": 1,
        "sample": 0,
        "margin": 1e-6,
    }
    verdict = check.judge(metrics, p)
    assert verdict.status == "passed" and "[a near tie, not judged]" in verdict.message
    verdict = check.judge({**metrics, "margin": 0.5}, p)
    assert (
        verdict.status == "failed" and "generated token 1 of sample 0 is 5 with the cache, 6 without" in verdict.message
    )


def test_a_gradient_only_causal_leak_names_the_position_and_token():
    check, p = params("causal")
    metrics = {
        "seq_len": 4,
        "positions": [0, 2],
        "tolerance": 1e-5,
        "logit_diff": {"0": [0.0], "2": [0.0, 0.0, 0.0]},
        "gradient_probe": "hook on Embedding",
        "embedding_grad": {"0": [1.0, 0.0, 0.0, 0.0], "2": [1.0, 1.0, 1.0, 0.5]},
    }
    verdict = check.judge(metrics, p)
    assert verdict.status == "failed"
    assert verdict.message == (
        "causal leak: gradient: the logits at position 2 depend on the embedding of token 3 "
        "(|∂logits/∂emb| = 0.5 > 1e-06)"
    )
