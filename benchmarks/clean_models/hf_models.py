"""Stock Hugging Face architectures with random weights from small configs (no network): GPT-2
(Conv1D projections, learned positions), Llama (rotary positions, grouped-query attention) and a
BERT masked-LM encoder. Traits, inputs and loss come from the config and the forward's signature.

    pytest --llmcheck benchmarks/clean_models/hf_models.py
"""

from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import llmcheck


@llmcheck.model
def gpt2():
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


@llmcheck.model
def llama():
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention
        intermediate_size=64,
        vocab_size=96,
        max_position_embeddings=48,
    )
    return LlamaForCausalLM(config)


@llmcheck.model
def bert():
    config = BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=96,
        max_position_embeddings=40,
    )
    return BertForMaskedLM(config)
