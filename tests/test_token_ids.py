"""Token ids are found by what they are, not by their name, and user hooks are blamed for their
own broken promises: the nanoGPT interface (``idx``, ``targets``, ``(logits, loss)``, last-position
logits without targets), a Hugging Face subclass whose forward takes ``**kwargs``, and an inputs
hook that cannot make the lengths it is asked for."""

from __future__ import annotations

import importlib.util

import pytest
import torch  # imported before any in-process session: pytester's module snapshot forbids a later first import
from model_sources import HF_SUBCLASS, NANOGPT, variant

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs transformers (pip install 'llmcheck[hf]')"
)

NANOGPT_CHECKS = ("causal", "fuzz", "generation", "batch")

# The nanoGPT model three ways: with get_batch's {"idx", "targets"}; the same with an off-by-one
# causal mask; and with no inputs hook at all (random ids, so no targets: it returns [B, 1, V]).
NANOGPT_FILE = (
    variant("@llmcheck.inputs\n", '@llmcheck.inputs(models=["nanogpt", "leaky_gpt"])\n', NANOGPT)
    + """

class LeakyAttention(CausalSelfAttention):
    def __init__(self):
        super().__init__()
        self.bias = torch.tril(torch.ones(T, T), diagonal=1).view(1, 1, T, T)  # the bug: sees one token ahead


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def leaky_gpt():
    model = GPT()
    model.h[1].attn = LeakyAttention()
    return model


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def gpt_without_inputs():
    return GPT()
"""
)


def by_model(result) -> dict:
    return {(r["model"], r["check"]): r for r in result.report["results"]}


def test_the_nanogpt_interface_runs_the_behaviour_checks_and_a_leak_is_found(run_llmcheck):
    checks = " or ".join(NANOGPT_CHECKS)
    result = run_llmcheck(NANOGPT_FILE, "-k", f"nanogpt and ({checks}) or (leaky_gpt or without_inputs) and causal")
    found = by_model(result)
    assert {c: found["nanogpt", c]["status"] for c in NANOGPT_CHECKS} == dict.fromkeys(NANOGPT_CHECKS, "passed"), found
    # the whole sequence was judged: logits at every position, with get_batch's targets (which follow
    # the perturbed ids) or, without an inputs hook, with next-token targets llmcheck passes
    for model in ("nanogpt", "gpt_without_inputs"):
        assert found[model, "causal"]["status"] == "passed", found[model, "causal"]
        assert "of 16 (perturbation and gradient" in found[model, "causal"]["message"]
    assert "output shape [B, T, 48]" in found["nanogpt", "fuzz"]["message"]
    assert "the 4 samples are independent in eval mode" in found["nanogpt", "batch"]["message"]
    leak = found["leaky_gpt", "causal"]
    assert leak["status"] == "failed"
    assert "causal leak: logits at position 0 change when the tokens after position 0 change" in leak["message"]
    assert "the logits at position 0 depend on the embedding of token 1" in leak["message"]


# The subclass, and a copy of it that breaks cached positions: with a cache it passes position ids
# that restart at 0, the bug a subclass adjusting one argument can bring in.
HF_SUBCLASS_FILE = (
    HF_SUBCLASS
    + """

class BrokenCache(GPT2LMHeadModel):
    def forward(self, input_ids=None, **kwargs):
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            kwargs["position_ids"] = torch.zeros_like(input_ids)  # the bug: cached steps restart at 0
        return super().forward(input_ids=input_ids, **kwargs)


@llmcheck.model
def broken_cache():
    return BrokenCache(config())
"""
)


@needs_transformers
def test_a_subclass_taking_kwargs_runs_kv_cache_and_padding_and_broken_positions_fail(run_llmcheck):
    selected = "(subclassed and (kv-cache or padding) or broken_cache and kv-cache) and not static-cache"
    result = run_llmcheck(HF_SUBCLASS_FILE, "-k", selected)
    found = by_model(result)
    cache, padding = found["subclassed", "kv-cache"], found["subclassed", "padding"]
    assert cache["status"] == "passed" and padding["status"] == "passed", found
    assert "decoding with cache equals the full forward at all 16 positions" in cache["message"]
    assert "left max |Δ|" in padding["message"]
    broken = found["broken_cache", "kv-cache"]
    assert broken["status"] == "failed", broken
    assert "token by token (prefill 1): logits at position 1 differ from the full forward" in broken["message"]


# Hooks that break their promise. ``padded_to_ten`` feeds a BERT encoder the way a tokenizer that
# adds [CLS]/[SEP] and pads to a minimum length would: asked for fewer than 10 tokens it gives 10.
# ``one_row_extra`` returns one row more than asked (its model is plain torch: no transformers import).
BERT_HOOKS = """
import torch
import llmcheck


@llmcheck.model
def bert_min_len():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                vocab_size=96, max_position_embeddings=40))


@llmcheck.model(vocab_size=96, max_seq_len=40)
def bad_rows():
    return torch.nn.Sequential(torch.nn.Embedding(96, 16), torch.nn.Linear(16, 96))


@llmcheck.inputs(models="bert_min_len")
def padded_to_ten(batch_size, seq_len):
    n = max(seq_len, 10)
    ids = torch.randint(5, 96, (batch_size, n))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@llmcheck.inputs(models="bad_rows")
def one_row_extra(batch_size, seq_len):
    ids = torch.randint(5, 96, (batch_size + 1, seq_len))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
"""


@needs_transformers
def test_hooks_that_break_their_promise_are_blamed_and_fuzz_searches_what_the_hook_makes(run_llmcheck):
    # seq_len=4: the default batches ask padded_to_ten for fewer tokens than it can make
    result = run_llmcheck(BERT_HOOKS, "-k", "fuzz or bert_min_len and batch", "--llmcheck-set", "seq_len=4")
    found = by_model(result)
    fuzz = found["bert_min_len", "fuzz"]
    assert fuzz["status"] == "passed", fuzz
    assert "seq_len 10..40 of max 40 (@llmcheck.inputs padded_to_ten makes lengths 10..40 only)" in fuzz["message"]
    # asked for 4 tokens, it gave 10: the item errors naming the hook, the model is not judged
    short = found["bert_min_len", "batch"]
    assert short["status"] == "error", short
    assert (
        "@llmcheck.inputs padded_to_ten(4, 4) returned input_ids of shape [4, 10]; asked for [4, 4]" in short["message"]
    )
    rows = found["bad_rows", "fuzz"]
    assert rows["status"] == "error", rows
    assert (
        "@llmcheck.inputs one_row_extra(1, 1) returned input_ids of shape [2, 1]; "
        "its first dimension must be the batch size 1" in rows["message"]
    )


# -- how the ids are found and followed (in-process, no model run) --------------------------------


def test_token_ids_are_the_tensor_bound_to_the_first_parameter_or_the_only_integer_one():
    from llmcheck.target.tokens import find, why_not_found

    ids = torch.randint(0, 9, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    assert find({"targets": ids + 1, "idx": ids}, first="idx")[0] == "idx"
    assert find({"input_ids": ids, "attention_mask": mask}, first=None)[0] == "input_ids"
    assert find({"tokens": ids, "keep": mask.bool(), "scale": ids.float()}, first=None)[0] == "tokens"
    assert find(ids, first="x") == (None, ids)
    ambiguous = {"a": ids, "b": ids + 1}
    assert find(ambiguous, first=None) == (None, None)
    assert "declare @llmcheck.model(token_key='...')" in why_not_found(ambiguous, first=None)
    assert find(ambiguous, first=None, declared="b")[0] == "b"


def test_targets_and_labels_computed_from_the_ids_follow_new_ids_and_other_tensors_stay():
    from llmcheck.target.tokens import replace

    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    batch = {
        "idx": ids,
        "targets": torch.tensor([[2, 3, 4, 9], [6, 7, -1, 9]]),  # next tokens; -1 is ignored
        "labels": torch.tensor([[1, 2, 3, 4], [-100, 6, 7, 8]]),  # the ids (the model shifts them)
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 4, dtype=torch.long),
    }
    new = ids + 10
    out = replace(batch, "idx", new)
    assert out["idx"].tolist() == new.tolist()
    assert out["targets"].tolist() == [[12, 13, 14, 9], [16, 17, -1, 9]]  # the token after the window is kept
    assert out["labels"].tolist() == [[11, 12, 13, 14], [-100, 16, 17, 18]]
    assert out["attention_mask"] is batch["attention_mask"] and out["token_type_ids"] is batch["token_type_ids"]


def test_a_declared_token_key_settles_a_batch_the_signature_cannot(tmp_path):
    from llmcheck.declare import DeclarationError, model
    from llmcheck.target.model import Target, load_declarations

    source = """
import torch
import llmcheck


class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)

    def forward(self, **inputs):  # no parameter to bind the ids to
        return self.emb(inputs["tokens"]) + self.emb(inputs["segments"])


@llmcheck.model(vocab_size=16)
def plain():
    return Wrapper()


@llmcheck.model(vocab_size=16, token_key="tokens")
def declared():
    return Wrapper()


@llmcheck.inputs
def batch(batch_size, seq_len):
    return {"segments": torch.zeros(batch_size, seq_len, dtype=torch.long),
            "tokens": torch.randint(0, 16, (batch_size, seq_len))}
"""
    path = tmp_path / "wrapped.py"
    path.write_text(source)
    models, hooks = load_declarations(path)
    plain, declared = (Target(m, hooks[m.name], {}) for m in models)
    batch = plain.batch()
    assert plain.tokens(batch) is None
    assert "declare @llmcheck.model(token_key='...')" in plain.no_tokens(batch, "perturb")
    assert declared.tokens(declared.batch()).shape == (2, 16)
    with pytest.raises(DeclarationError, match="token_key=3"):
        model(token_key=3)(lambda: None)


def test_a_last_position_only_forward_is_called_again_with_targets_and_the_rngs_as_they_were(tmp_path):
    from llmcheck.target.model import Target, load_declarations

    path = tmp_path / "nano.py"
    path.write_text(NANOGPT)
    (decl,), _ = load_declarations(path)
    t = Target(decl, {}, {})  # no inputs hook: random ids, no targets in the batch
    model = t.build().train()  # dropout on: the retry must draw what the first call drew
    batch = t.batch()
    torch.manual_seed(5)
    logits, _ = t.forward(model, batch)
    assert logits.shape == (2, 16, 48) and t.takes("targets")
    torch.manual_seed(5)
    again, loss = model(batch, targets=torch.cat([batch[:, 1:], batch[:, -1:]], dim=1))
    assert torch.equal(logits, again)
    torch.manual_seed(5)
    assert torch.equal(t.forward(model, batch)[0], again)  # later calls pass the targets at once


def test_keywords_behind_kwargs_come_from_the_base_class_or_the_wrapped_model():
    from llmcheck.target.signature import forward_signature

    class Base(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
            return input_ids

    class Subclass(Base):
        def forward(self, input_ids=None, **kwargs):
            return super().forward(input_ids, **kwargs)

    class Alone(torch.nn.Module):
        def forward(self, x, **kwargs):
            return x

    sub = forward_signature(Subclass())
    assert (sub.first, sub.takes("attention_mask"), sub.takes("labels")) == ("input_ids", True, False)
    assert sub.source("past_key_values") == "Base.forward, through **kwargs"
    assert sub.source("input_ids") == "forward"
    assert forward_signature(Alone()).keywords == {"x": "forward"}


@needs_transformers
def test_a_wrapper_taking_kwargs_takes_the_keywords_of_its_one_hugging_face_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmcheck.target.signature import forward_signature

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))

        def forward(self, input_ids, **kwargs):
            return self.lm(input_ids, **kwargs)

    sig = forward_signature(Wrapper())
    assert sig.takes("attention_mask") and sig.takes("position_ids")
    assert sig.source("attention_mask") == "lm (GPT2LMHeadModel).forward, through **kwargs"
