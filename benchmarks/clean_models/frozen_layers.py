"""A decoder set up for fine-tuning the usual way: the token and position embeddings and the lower
half of the stack frozen (``requires_grad_(False)``), the upper half, the final norm and the head
trained. Built from PyTorch's own ``nn.TransformerEncoderLayer`` with a causal mask.

    pytest --llmcheck benchmarks/clean_models/frozen_layers.py
"""

import torch
import torch.nn as nn

import llmcheck

VOCAB, MAX_LEN, WIDTH, LAYERS = 128, 64, 64, 4


class FrozenBackboneLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Embedding(MAX_LEN, WIDTH)
        layer = dict(d_model=WIDTH, nhead=4, dim_feedforward=4 * WIDTH, dropout=0.1, activation="gelu")
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(**layer, batch_first=True, norm_first=True) for _ in range(LAYERS)
        )
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        for frozen in (self.tok, self.pos, *self.layers[: LAYERS // 2]):
            frozen.requires_grad_(False)

    def forward(self, input_ids):
        T = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=input_ids.device)
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return self.head(self.norm(x))


@llmcheck.model(causal=True, vocab_size=VOCAB, max_seq_len=MAX_LEN)
def frozen_backbone():
    return FrozenBackboneLM()
