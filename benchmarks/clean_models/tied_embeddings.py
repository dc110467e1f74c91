"""An LSTM language model with tied input and output embeddings (Press & Wolf, 2017), in the shape
of PyTorch's word_language_model example (``tie_weights=True``): the decoder's weight *is* the
encoder's, one parameter under two names.

    pytest --llmcheck benchmarks/clean_models/tied_embeddings.py
"""

import torch.nn as nn

import llmcheck

VOCAB, WIDTH = 200, 64


class TiedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(VOCAB, WIDTH)
        self.rnn = nn.LSTM(WIDTH, WIDTH, num_layers=2, dropout=0.2, batch_first=True)
        self.decoder = nn.Linear(WIDTH, VOCAB)
        self.decoder.weight = self.encoder.weight  # tied: the hidden size must equal the embedding size
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, input_ids):
        output, _ = self.rnn(self.drop(self.encoder(input_ids)))
        return self.decoder(self.drop(output))


@llmcheck.model(causal=True, vocab_size=VOCAB, max_seq_len=128)
def tied_lstm():
    return TiedLSTM()
