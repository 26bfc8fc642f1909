"""Tiny causal LMs built from a config, saved to disk, loaded back like a user's model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 300


def save_tiny_llama(path: Path, vocab: int = VOCAB, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def save_tiny_gpt2(path: Path, vocab: int = VOCAB, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def load(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
