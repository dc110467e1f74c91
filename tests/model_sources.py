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
