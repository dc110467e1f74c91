"""Model files for the equivalence checks (compile, export, attention, checkpointing, static-cache).

Each buggy model is the clean one with one piece of text replaced (`model_sources.variant`), so a
test shows exactly the line that carries the bug it is about.
"""

from model_sources import variant

FORWARD_HEAD = "        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))\n"

# A Python `if` on a tensor's value: dynamo breaks the graph there, torch.export cannot capture it.
BRANCH = variant(
    FORWARD_HEAD,
    FORWARD_HEAD + "        if x.sum() > 0:  # data-dependent branch\n            x = x * 1.0\n",
)

# Two models of one file: the branch is advisory by default, and fails a model declared to compile
# with fullgraph and to be exported.
GATED = '{"compile": {"fullgraph": True}, "export": {"required": True}}'
BRANCH_TWICE = (
    BRANCH
    + f"""

@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks={GATED})
def tiny_gated():
    return TinyLM()
"""
)

# A step skipped under compilation ("to avoid a graph break"): compiled and eager disagree.
SKIPPED_WHEN_COMPILED = variant(
    "        return self.head(x)\n",
    "        if not torch.compiler.is_compiling():  # the bug: this normalisation never runs compiled\n"
    "            x = F.layer_norm(x, (D,))\n"
    "        return self.head(x)\n",
)

# Position ids cached in a dict keyed by the length: the graph is specialised on every length.
PER_LENGTH_CACHE = variant(
    FORWARD_HEAD,
    "        n = idx.shape[1]\n"
    "        if n not in self.cached:  # the bug: a Python dict keyed by the length\n"
    "            self.cached[n] = torch.arange(n, device=idx.device)\n"
    "        x = self.tok(idx) + self.pos(self.cached[n])\n",
    variant(
        "        self.head = nn.Linear(D, V, bias=False)\n",
        "        self.head = nn.Linear(D, V, bias=False)\n        self.cached = {}\n",
    ),
)

# Attention with Hugging Face's switch (config._attn_implementation): an SDPA path and an eager path.
SWITCHABLE_ATTENTION = """
import math
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
import llmcheck

V, D, H, T = 64, 32, 2, 32


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)

    def forward(self, x, mask):
        B, n, _ = x.shape
        q, k, v = (t.view(B, n, H, D // H).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=x.device)  # a pad query may see itself: no empty rows
        keep = causal & (mask[:, None, None, :].bool() | eye)
        if self.config._attn_implementation == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(D // H)
            y = scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, n, D))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = Attention(config)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class SwitchableLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(_attn_implementation="sdpa")
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.blocks = nn.ModuleList([Block(self.config), Block(self.config)])
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = self.tok(input_ids) + self.pos(position_ids)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x)


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def switchable():
    return SwitchableLM()
"""

# The eager path masks only the future, not the padding: right under sdpa, wrong under eager.
EAGER_IGNORES_PADDING = variant(
    '            y = scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v\n',
    "            # the bug: the eager path masks the future only, not the padding\n"
    '            y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v\n',
    SWITCHABLE_ATTENTION,
)

# Gradient checkpointing behind a boolean attribute, as Hugging Face models do it.
CHECKPOINTED = variant(
    "        for block in self.blocks:\n            x = block(x)\n",
    "        for block in self.blocks:\n"
    "            if self.gradient_checkpointing and self.training:\n"
    "                x = checkpoint(block, x, use_reentrant=False)\n"
    "            else:\n"
    "                x = block(x)\n",
    variant(
        "        self.head = nn.Linear(D, V, bias=False)\n",
        "        self.head = nn.Linear(D, V, bias=False)\n        self.gradient_checkpointing = False\n",
        variant("import llmcheck\n", "import llmcheck\nfrom torch.utils.checkpoint import checkpoint\n"),
    ),
)

# The recomputation draws fresh dropout masks: the gradients belong to another forward.
CHECKPOINT_FORGETS_RNG = variant(
    "checkpoint(block, x, use_reentrant=False)",
    "checkpoint(block, x, use_reentrant=False, preserve_rng_state=False)  # the bug",
    CHECKPOINTED,
)

# The switch is there but the forward never reads it: nothing is checkpointed.
CHECKPOINT_SWITCH_IGNORED = variant(
    "if self.gradient_checkpointing and self.training:", "if False:  # the bug: the switch is never read", CHECKPOINTED
)

HF_CLEAN = """
import llmcheck
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


@llmcheck.model
def gpt2():  # Conv1D projections, learned absolute positions, n_positions=32
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))


@llmcheck.model
def llama():  # rotary positions, grouped-query attention
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=64, vocab_size=96,
                                        max_position_embeddings=48))
"""

# Llama that takes the cache's length from its key tensor: right for a dynamic cache (its tensors
# hold the filled positions), wrong for a static one (its tensors are pre-allocated to the maximum).
STATIC_CACHE_POSITIONS = """
import torch
import llmcheck
from transformers import LlamaConfig, LlamaForCausalLM


class CachedLengthFromTensors(LlamaForCausalLM):
    def forward(self, input_ids=None, cache=None, position_ids=None, **kwargs):
        if cache is not None and cache.get_seq_length() > 0:
            start = cache.layers[0].keys.shape[-2]  # the bug: the static cache's full length
            position_ids = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)[None]
        return super().forward(input_ids=input_ids, cache=cache, position_ids=position_ids, **kwargs)


@llmcheck.model
def llama_positions_from_cache_tensors():
    return CachedLengthFromTensors(LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                               num_key_value_heads=1, intermediate_size=64, vocab_size=96,
                                               max_position_embeddings=48))
"""
