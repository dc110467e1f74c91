"""Model files used by the tests, as source text: a small clean causal LM and ways to break it.

``CLEAN`` passes every check. Buggy variants are built by text substitution on it, so each test
shows exactly which line carries the bug it is about.
"""

CLEAN = """
import torch
import torch.nn as nn
import torch.nn.functional as F
import llmcheck

V, D, T = 64, 32, 32


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        q, k, v = self.qkv(self.ln(x)).chunk(3, dim=-1)
        x = x + self.drop(self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
        return x + self.mlp(x)


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(D, V, bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def tiny():
    return TinyLM()
"""


def variant(old: str, new: str, source: str = CLEAN) -> str:
    """``source`` with one piece of text replaced; fails loudly if the text is not there."""
    assert old in source, f"{old!r} not in the model source"
    return source.replace(old, new, 1)


# The nanoGPT interface (karpathy/nanoGPT model.py): token ids are ``idx``, ``forward(idx,
# targets=None)`` returns ``(logits, loss)``, and without targets only the last position's logits
# ([B, 1, V]). Inputs the way its get_batch makes them: random windows of one corpus, with targets
# the same windows shifted by one token.
NANOGPT = """
import math
import torch
import torch.nn as nn
import torch.nn.functional as F
import llmcheck

V, D, H, T = 48, 32, 2, 32


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(D, 3 * D)
        self.c_proj = nn.Linear(D, D)
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, L, C = x.size()
        q, k, v = (t.view(B, L, H, C // H).transpose(1, 2) for t in self.c_attn(x).split(D, dim=2))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :L, :L] == 0, float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, L, C))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = CausalSelfAttention()
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D), nn.Dropout(0.1))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
        self.h = nn.ModuleList([Block(), Block()])
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, V, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx, targets=None):
        b, t = idx.size()
        x = self.wte(idx) + self.wpe(torch.arange(0, t, dtype=torch.long, device=idx.device))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # inference-time optimisation: the last position only
            loss = None
        return logits, loss


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def nanogpt():
    return GPT()


DATA = torch.randint(0, V, (4096,), generator=torch.Generator().manual_seed(0))


@llmcheck.inputs
def get_batch(batch_size, seq_len):
    ix = torch.randint(len(DATA) - seq_len - 1, (batch_size,))
    x = torch.stack([DATA[i : i + seq_len] for i in ix])
    y = torch.stack([DATA[i + 1 : i + 1 + seq_len] for i in ix])
    return {"idx": x, "targets": y}
"""

# A subclass of a Hugging Face model that adjusts one argument and passes the rest through
# ``**kwargs``: it takes attention_mask and the cache from GPT2LMHeadModel.forward underneath.
HF_SUBCLASS = """
import torch
import llmcheck
from transformers import GPT2Config, GPT2LMHeadModel


class Subclassed(GPT2LMHeadModel):
    def forward(self, input_ids=None, **kwargs):
        return super().forward(input_ids=input_ids, **kwargs)


def config():
    return GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=32, bos_token_id=0, eos_token_id=0)


@llmcheck.model
def subclassed():
    return Subclassed(config())
"""


# Checks whose names or families contain another check's name: ``-k kv-cache`` also selects
# static-cache (family kv-cache) and ``-k checkpoint`` selects checkpointing.
NAMESAKES = {"kv-cache": "static-cache", "checkpoint": "checkpointing"}


def select(*checks: str) -> str:
    """A ``-k`` expression that selects exactly ``checks``, not their namesakes."""
    extra = [v for k, v in NAMESAKES.items() if k in checks and v not in checks]
    return " or ".join(checks) if not extra else f"({' or '.join(checks)}) and not ({' or '.join(extra)})"
