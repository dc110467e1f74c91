"""NaN is never equal: every check that compares outputs (or states) that must be equal fails on NaN,
naming the first NaN position, where NaN on both sides once passed as "identical"; the same model
with finite outputs passes them all.

Checks that need finite logits to judge at all (checkpoint, batch, padding, kv-cache, resume) first
confirm them (llmcheck.target.preconditions, issue 14 point 6) and are inconclusive on a model whose
plain forward is NaN; their judges still fail NaN wherever it gets past that (a training run that
diverges, a record judged again), which the judge tests below hold them to.
"""

from __future__ import annotations

import importlib
import math

import pytest

from llmcheck.settings import Params
from llmcheck.target.equality import nan_problem

EQUALITY = ("eval", "checkpoint", "resume", "frozen", "batch", "padding", "kv-cache")

# A small causal LM in the transformers conventions (attention_mask, past_key_values, use_cache)
# whose frozen output prior is log(PRIOR): PRIOR holds a -1 for token 5 in `nan_logits`, so
# log(-1) = NaN in that column of every position's logits (first NaN at [0, 0, 5]); `finite_twin`
# is the same model with a positive prior.
MODELS = """
import torch
import torch.nn as nn
import torch.nn.functional as F
import llmcheck

V, D, H, T = 32, 16, 2, 16


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


class Prior(nn.Module):
    \"\"\"A frozen per-token log-prior added to the logits.\"\"\"

    def __init__(self, prior):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("log_prior", torch.log(prior))

    def forward(self, logits):
        return logits + self.scale * self.log_prior


class CachedLM(nn.Module):
    def __init__(self, prior):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        self.ln = nn.LayerNorm(D)
        self.attn = Attention()
        self.head = nn.Linear(D, V, bias=False)
        self.prior = Prior(prior).requires_grad_(False)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        B, L = input_ids.shape
        past_len = 0 if past_key_values is None else past_key_values[0].shape[2]
        total = past_len + L
        if attention_mask is None:
            attention_mask = torch.ones(B, total, dtype=torch.long, device=input_ids.device)
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]
        x = self.tok(input_ids) + self.pos(pos)
        causal = torch.ones(L, total, dtype=torch.bool, device=x.device).tril(past_len)
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        mask = mask | torch.eye(L, total, dtype=torch.bool, device=x.device).roll(past_len, dims=1)
        a, present = self.attn(self.ln(x), mask, past_key_values)
        logits = self.prior(self.head(x + a))
        return (logits, present) if use_cache else logits


def prior(nan):
    p = torch.ones(V)
    p[5] = -1.0 if nan else 2.0
    return p


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def nan_logits():
    return CachedLM(prior(nan=True))


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def finite_twin():
    return CachedLM(prior(nan=False))


class NaNInTraining(CachedLM):
    def forward(self, input_ids, attention_mask=None):
        logits = super().forward(input_ids, attention_mask)
        return logits * torch.log(-torch.ones(())) if self.training else logits  # log(-1): NaN in train mode


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def nan_in_training():  # eval forwards are finite, so batch reaches its train-mode comparison
    return NaNInTraining(prior(nan=False))


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks={"resume": {"lr": 1e30}})
def diverging():  # finite at first; AdamW at lr 1e30 takes it to NaN in its second step
    return CachedLM(prior(nan=False))
"""


def test_nan_on_both_sides_is_never_equal_and_equal_infinities_are():
    torch = pytest.importorskip("torch")
    from llmcheck.target.tensors import first_nan, max_abs_diff, nan_report, worst_index

    nan, inf = float("nan"), float("inf")
    a = torch.tensor([[0.5, 1.0, nan], [nan, -inf, 2.0]])
    assert max_abs_diff(a, a.clone()) == inf  # NaN on both sides counted as a difference
    assert worst_index(a, a.clone()) == [0, 2] and first_nan(a) == [0, 2]
    assert nan_report(a, a.clone()) == {"index": [0, 2], "counts": [2, 2], "numel": 6}
    masked = torch.tensor([[0.5, -inf], [inf, 2.0]])
    assert max_abs_diff(masked, masked.clone()) == 0.0  # a -inf mask equals itself
    assert max_abs_diff(masked, masked + 1) == 1.0
    assert max_abs_diff(torch.tensor([inf]), torch.tensor([1.0])) == inf  # not the largest finite float
    assert nan_report(masked, masked) is None
    assert nan_report(masked, a) == {"index": [0, 2], "counts": [0, 2], "numel": 4}


def test_the_nan_problem_names_the_sides_the_counts_and_the_first_index():
    both = nan_problem({"index": [0, 0, 5], "counts": [64, 64], "numel": 4096}, "the outputs", ("a", "b"))
    assert both == (
        "NaN in the outputs on both sides (64 of 4096 values in a, 64 in b), first at index [0, 0, 5]: "
        "NaN is never equal, so equality cannot be shown"
    )
    one = nan_problem({"index": [1, 3], "counts": [0, 2], "numel": 8}, "buffer bn.running_mean", ("before", "after"))
    assert one.startswith("NaN in buffer bn.running_mean, in after only (2 of 8 values), first at index [1, 3]")


def test_nan_outputs_fail_the_equality_checks_or_leave_them_inconclusive_and_the_finite_twin_passes(run_llmcheck):
    selection = (
        f"({' or '.join(EQUALITY)}) and not diverging and not nan_in_training"
        " or diverging and resume or nan_in_training and batch"
    )
    result = run_llmcheck(MODELS, "-k", selection)
    found = {(r["model"], r["check"]): r for r in result.report["results"]}
    twin = {c: found["finite_twin", c] for c in EQUALITY}
    assert {c: r["status"] for c, r in twin.items()} == dict.fromkeys(EQUALITY, "passed"), twin
    nan = {c: found["nan_logits", c] for c in EQUALITY}
    inconclusive = ("checkpoint", "resume", "batch", "padding", "kv-cache")  # finite logits are their precondition
    assert {c: r["status"] for c, r in nan.items()} == {
        **dict.fromkeys(inconclusive, "skipped"),
        "eval": "failed",
        "frozen": "failed",
    }, nan
    first = "[0, 0, 5]"  # logits [batch, position, token]: token 5 at the first position
    for check in inconclusive:
        assert "NaN" in nan[check]["message"] and f"first at logits index {first}" in nan[check]["message"]
    assert nan["eval"]["message"] == (
        "two eval forwards, grad mode vs torch.no_grad, grad mode vs torch.inference_mode, before vs after "
        "model.train(); model.eval(): NaN in the outputs on both sides (32 of 1024 values in one, 32 in the other), "
        f"first at index {first}: NaN is never equal, so equality cannot be shown; first module whose output holds "
        "NaN: prior (Prior)"
    )
    assert nan["frozen"]["message"] == (
        "NaN in buffer prior.log_prior of frozen module prior on both sides (1 of 32 values in the state before "
        "training, 1 in the state after), first at index [5]: NaN is never equal, so equality cannot be shown"
    )
    trained = found["nan_in_training", "batch"]
    assert trained["status"] == "failed", trained["message"]
    assert trained["message"].startswith("train mode: NaN in the outputs (")  # every value: log(-1) scales them all
    assert trained["message"].endswith("first at index [0, 0, 0]: NaN is never equal, so equality cannot be shown")
    # Finite at first, NaN once training diverges: both runs end NaN, once reported as "identical".
    diverged = found["diverging", "resume"]
    assert diverged["status"] == "failed", diverged["message"]
    assert diverged["message"].startswith(
        "after resuming at step 2, parameter tok.weight at step 3: NaN in the parameter on both sides ("
    )
    assert (
        "the uninterrupted run" in diverged["message"] and "the training loss is NaN from step 2" in diverged["message"]
    )


# -- each judge on a record with NaN on both sides: failed, naming the first NaN ---------------------
NAN = {"index": [0, 3, 5], "counts": [2, 2], "numel": 512}
INF = math.inf


def judged(module: str, metrics: dict, **params):
    check = importlib.import_module(f"llmcheck.checks.{module}").CHECK
    return check.judge(metrics, Params({**{k: p.default for k, p in check.params.items()}, **params}))


RECORDS = {
    "eval_mode": {
        "still_training": [],
        "nan_module": "head (Linear)",
        "comparisons": {
            c: {"max_abs_diff": INF, "allowed": 0.0, "culprit": "head (Linear)", "culprit_abs_diff": INF, "nan": NAN}
            for c in ("repeat", "no_grad", "inference_mode", "toggle")
        },
    },
    "checkpoint": {
        "formats": {
            "torch": {
                "max_abs_diff": INF,
                "worst_index": [0, 3, 5],
                "missing_keys": [],
                "unexpected_keys": [],
                "not_in_state_dict": {},
                "untied": [],
                "file_bytes": 10,
                "nan": NAN,
            }
        },
        "tied_groups": [],
        "output_shape": [2, 16, 16],
    },
    "batch": {
        "batch_size": 2,
        "modes": {
            "eval": {
                "tolerance": 1e-5,
                "output_diff": [[0.0, INF], [INF, 0.0]],
                "culprit": {"i": 1, "j": 0, "module": "head (Linear)"},
                "nan": {**NAN, "counts": [2]},
            }
        },
    },
    "padding": {
        "pad_tokens": 4,
        "pad_token_id": 0,
        "takes_position_ids": False,
        "tolerance": 1e-5,
        "sides": {
            "left": {
                "max_abs_diff": INF,
                "nan": NAN,
                "sample": 0,
                "position": 3,
                "token": 7,
                "mask_effect": 1.0,
            }
        },
    },
    "kv_cache": {
        "keyword": "past_key_values",
        "seq_len": 16,
        "tolerance": 1e-5,
        "probes": {"token by token": {"prefill": 1, "diff": [INF] * 16, "nan": NAN}},
    },
    "resume": {
        "steps": 4,
        "resume_at": 2,
        "first_divergence": {"step": 3, "parameter": "w", "max_abs_diff": INF, "n_parameters": 1, "nan": NAN},
        "losses_uninterrupted": [2.3, "NaN", "NaN", "NaN"],  # as a report read back writes NaN
        "losses_resumed": ["NaN", "NaN"],
        "not_restored": {},
        "scheduler": False,
        "checkpoint_bytes": 10,
    },
    "frozen": {
        "frozen_parameters": 1,
        "frozen_modules": ["enc"],
        "frozen_buffers": 0,
        "changed_parameters": {"enc.w": INF},
        "changed_buffers": {},
        "nan": {"enc.w": NAN},
        "with_gradient": {},
        "unfrozen": [],
    },
}


@pytest.mark.parametrize("module", sorted(RECORDS))
def test_every_equality_judge_fails_nan_on_both_sides_naming_the_first_nan(module):
    verdict = judged(module, RECORDS[module])
    assert verdict.status == "failed", verdict.message
    assert "NaN is never equal" in verdict.message and "first at index [0, 3, 5]" in verdict.message
    assert "max |Δ| = inf" not in verdict.message  # NaN named as NaN, not as an infinite difference
    assert "samples mix" not in verdict.message and "attention_mask has no effect" not in verdict.message
