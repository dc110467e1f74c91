"""A character-level GPT with nanoGPT's interface, the most copied small GPT codebase.

``forward(idx, targets=None)`` returns ``(logits, loss)``: full-length logits and the loss when
targets are given, only the last position's logits when they are not (nanoGPT's inference
shortcut). Batches are ``{"idx": ..., "targets": ...}`` drawn the way nanoGPT's ``get_batch`` draws
them: random 64-character windows of one corpus, sampled with replacement, eval windows from the
last 10%. The vocabulary is the corpus's characters, as in nanoGPT's shakespeare_char.

    pytest --llmcheck benchmarks/clean_models/nanogpt_char.py
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import llmcheck

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "data" / "corpus.txt"
TEXT = CORPUS.read_text(encoding="utf-8")
CHARS = sorted(set(TEXT))
STOI = {c: i for i, c in enumerate(CHARS)}
DATA = torch.tensor([STOI[c] for c in TEXT], dtype=torch.long)
SPLIT = int(0.9 * len(DATA))  # the last 10% is the validation split
BLOCK_SIZE = 64  # context length, in characters
BATCH_SIZE = 16
TRAIN_BATCHES, EVAL_BATCHES = 100, 20  # get_batch calls per pass of train_data / eval_data


@dataclass
class GPTConfig:
    block_size: int = BLOCK_SIZE
    vocab_size: int = len(CHARS)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.2  # shakespeare_char's value
    bias: bool = False


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=drop, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of the residual projections (GPT-2)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size, f"sequence of length {t} > block size {self.config.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:  # inference-time mini-optimization: only forward the lm_head on the very last position
            logits = self.lm_head(x[:, [-1], :])
            loss = None
        return logits, loss


def get_batch(split: str, batch_size: int = BATCH_SIZE, block_size: int = BLOCK_SIZE) -> dict:
    """nanoGPT's train.py get_batch: random windows, with replacement, and the next characters."""
    data = DATA[:SPLIT] if split == "train" else DATA[SPLIT:]
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return {"idx": x, "targets": y}


@llmcheck.model(causal=True, vocab_size=len(CHARS), max_seq_len=BLOCK_SIZE)
def nanogpt_char():
    return GPT(GPTConfig())


@llmcheck.inputs
def batch(batch_size: int, seq_len: int):
    return get_batch("train", batch_size, seq_len)


@llmcheck.loss
def loss(model, batch):
    _, loss = model(**batch)  # as train.py does: logits, loss = model(X, Y)
    return loss


@llmcheck.train_data
def train_batches():
    for _ in range(TRAIN_BATCHES):
        yield get_batch("train")


@llmcheck.eval_data
def eval_batches():
    for _ in range(EVAL_BATCHES):
        yield get_batch("val")


@llmcheck.optimizer
def adamw(model):
    """nanoGPT's configure_optimizers: weight decay on matrices only; shakespeare_char's lr and betas."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))
