"""The fine-tune loop (gradstore.ops.evaluate) on a tiny Llama: trains, evaluates, gives the
base model back."""

from __future__ import annotations

import json

import pytest
import torch

from gradstore.grads.model import load_tokenizer, shared_models
from gradstore.grads.warmup import CHECKPOINT_PREFIX
from gradstore.ops.evaluate import Adapted, TrainSettings, answer_loss, finetune

ROWS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Add {i} and {i + 1}."},
                                     {"role": "assistant", "content": str(2 * i + 1)}]}
        for i in range(8)]


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def test_epochs_follow_the_pass_budget():
    s = TrainSettings(passes=160)
    assert [s.epochs_for(n) for n in (10, 20, 100, 2000)] == [16, 8, 2, 1]


def test_finetune_lowers_loss_and_restores_the_base_model(llama_dir, data, tmp_path):
    settings = TrainSettings(passes=48, lr=1e-2, batch_size=4, lora_layers=None,
                             max_length=64)
    model = str(llama_dir)
    with shared_models():
        tok = load_tokenizer(model)
        with Adapted(model, None, None) as base:
            before = answer_loss(base, tok, ROWS)
        ck = finetune(model, None, data, tmp_path / "ft", settings, len(ROWS), seed=0)
        kept = sorted(p.name for p in (tmp_path / "ft").iterdir()
                      if p.name.startswith(CHECKPOINT_PREFIX))
        assert kept == [ck.name]  # 6 epochs, only the last checkpoint kept
        with Adapted(model, None, ck) as lm:
            after = answer_loss(lm, tok, ROWS)
        with Adapted(model, None, None) as base:
            again = answer_loss(base, tok, ROWS)
        # a second run into the same directory starts afresh and lands on the same weights
        ck2 = finetune(model, None, data, tmp_path / "ft", settings, len(ROWS), seed=0)
        with Adapted(model, None, ck2) as lm:
            after2 = answer_loss(lm, tok, ROWS)
    assert after < before - 0.2  # LoRA starts as the identity: untrained, after == before
    assert again == pytest.approx(before, rel=1e-6)  # the LoRA layers were removed
    assert after2 == pytest.approx(after, rel=1e-4)
    assert torch.get_num_threads() >= 1
