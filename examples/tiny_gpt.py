"""A clean character-level GPT of nanoGPT's shape; it passes every llmcheck check.

pytest --llmcheck examples/tiny_gpt.py
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import llmcheck


@dataclass
class Config:
    vocab_size: int = 256  # bytes: a character-level model
    block_size: int = 64  # longest sequence, in tokens
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64  # width of the residual stream
    dropout: float = 0.1  # active in training, off in eval


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@llmcheck.model(causal=True, vocab_size=256, max_seq_len=64)
def tiny_gpt():
    return TinyGPT(Config())


@llmcheck.inputs
def text_batch(batch_size: int, seq_len: int):
    """Real text, not random ids: windows of this file's bytes."""
    data = torch.tensor(list(open(__file__, "rb").read()), dtype=torch.long)
    starts = torch.randint(0, len(data) - seq_len, (batch_size,))
    return torch.stack([data[s : s + seq_len] for s in starts])


# Speed, memory, behaviour and inference-only equivalence are tiny_gpt's own; the fine-tuning set-up
# is checked for what freezing can break (checkpoint, eval, frozen, gradient, resume, and the training
# paths of compile, checkpointing and distributed): per-model settings turn the rest off.
SAME_AS_TINY_GPT = [
    "latency",
    "throughput",
    "amp",
    "memory",
    "leak",
    "coldstart",
    "hang",
    "compression",
    "causal",
    "batch",
    "padding",
    "kv-cache",
    "fuzz",
    "generation",
    "attention",
    "export",
    "static-cache",
]


@llmcheck.model(causal=True, vocab_size=256, max_seq_len=64, checks={name: False for name in SAME_AS_TINY_GPT})
def tiny_gpt_finetune():
    """The same model set up for fine-tuning: position embeddings and the first block frozen."""
    model = TinyGPT(Config())
    for module in (model.wpe, model.blocks[0]):
        module.requires_grad_(False)
    return model
