"""Hugging Face models returned by a model file: traits, inputs and loss come from the config and
the forward's signature, and real architectures built from small configs (GPT-2, Llama, a BERT
encoder) pass the behaviour checks, with causal-only checks skipped on the encoder."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

BEHAVIOUR = ("causal", "batch", "padding", "kv-cache", "fuzz")

HF_MODELS = """
import llmcheck
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


@llmcheck.model
def gpt2():  # Conv1D projections, learned absolute positions, n_positions=32
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))


@llmcheck.model
def llama():  # rotary positions, grouped-query attention
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=64, vocab_size=96,
                                        max_position_embeddings=48))


def tiny_bert():
    return BertForMaskedLM(BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                      vocab_size=96, max_position_embeddings=40))


@llmcheck.model
def bert():
    return tiny_bert()


@llmcheck.model(causal=True)
def bert_as_decoder():  # the bug: a bidirectional encoder declared causal
    return tiny_bert()
"""


def test_real_architectures_from_small_configs_pass_the_behaviour_checks(run_llmcheck):
    only_causal_on_bert_as_decoder = f"({' or '.join(BEHAVIOUR)}) and not (bert_as_decoder and not causal)"
    result = run_llmcheck(HF_MODELS, "-k", only_causal_on_bert_as_decoder)
    found = {(r["model"], r["check"]): r for r in result.report["results"]}
    status = {key: r["status"] for key, r in found.items()}
    for model in ("gpt2", "llama"):
        assert {c: status[model, c] for c in BEHAVIOUR} == dict.fromkeys(BEHAVIOUR, "passed"), found
    # traits from the config: max positions bound the fuzzed lengths, the cache keyword is found
    assert "seq_len 1..32 of max 32" in found["gpt2", "fuzz"]["message"]
    assert "seq_len 1..48 of max 48" in found["llama", "fuzz"]["message"]
    assert "greedy generation of 8 tokens equal" in found["llama", "kv-cache"]["message"]
    # the encoder: causal-only checks skipped with the reason, the others pass
    assert {c: status["bert", c] for c in BEHAVIOUR} == {
        "causal": "skipped",
        "kv-cache": "skipped",
        "batch": "passed",
        "padding": "passed",
        "fuzz": "passed",
    }
    assert "needs a causal (decoder) model" in found["bert", "causal"]["message"]
    assert "causal = False, from config" in found["bert", "causal"]["message"]
    # a bidirectional encoder declared causal: the leak is found at the first position
    leak = found["bert_as_decoder", "causal"]
    assert leak["status"] == "failed"
    assert "logits at position 0 change when the tokens after position 0 change" in leak["message"]
    assert "the logits at position 0 depend on the embedding of token 1" in leak["message"]
