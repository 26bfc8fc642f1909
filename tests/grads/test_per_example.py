"""Batched per-example LoRA gradients against plain autograd, one example at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from gradstore.grads.per_example import PerExampleGradients, collate, loss_positions
from tests.grads.models import VOCAB, load, save_tiny_gpt2, save_tiny_llama

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def peft_model(path, targets, seed=0):
    torch.manual_seed(seed)
    model = get_peft_model(
        load(path), LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    )
    with torch.no_grad():  # a "trained" adapter: B != 0 so that lora_A gets gradients too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def random_examples(rng, n, lo=5, hi=24):
    seqs, masks = [], []
    for _ in range(n):
        L = int(rng.integers(lo, hi))
        seqs.append(rng.integers(3, VOCAB, L))
        m = np.zeros(L, dtype=bool)
        m[int(rng.integers(1, L - 1)) :] = True  # a response at the end
        masks.append(m)
    return seqs, masks


def autograd_one(model, ids, mask):
    """The gradient of one example alone: HF's own masked mean loss, batch of 1, no padding."""
    labels = torch.tensor(np.where(mask, ids, -100))[None]
    out = model(input_ids=torch.tensor(ids)[None], labels=labels, use_cache=False)
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(out.loss, params)
    return torch.cat([g.reshape(-1) for g in gs]), float(out.loss)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("strategy", ["hooks", "loop"])
def test_batched_equals_autograd_per_example(arch, strategy, llama_dir, gpt2_dir):
    path, targets = (llama_dir, LLAMA_TARGETS) if arch == "llama" else (gpt2_dir, ["c_attn"])
    model = peft_model(path, targets)
    rng = np.random.default_rng(1)
    seqs, masks = random_examples(rng, 6)
    pe = PerExampleGradients(model, strategy=strategy)
    assert pe.strategy == strategy
    batch = collate(seqs, masks, pad_id=0)
    assert int(batch.attention_mask.sum()) < batch.input_ids.numel()  # padding present
    G, losses = pe(batch)
    assert G.shape == (6, pe.num_params)
    for b in range(6):
        ref, ref_loss = autograd_one(model, seqs[b], masks[b])
        rel = float((G[b] - ref).norm() / ref.norm())
        assert rel < 1e-5, (b, rel)
        assert abs(float(losses[b]) - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
        # both halves of each LoRA pair carry gradient
    assert (G.abs().sum(0) > 0).float().mean() > 0.99
    assert pe.keeps_logits is True  # logits only where a loss token follows


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logits_kept_at_the_answers_only_give_the_same_gradients(arch, llama_dir, gpt2_dir):
    """Long prompts, short answers (a chat pool): the logits are computed at the answers'
    positions only, and every example's gradient and loss are still HF's own, one example
    at a time with the full logits."""
    path, targets = (llama_dir, LLAMA_TARGETS) if arch == "llama" else (gpt2_dir, ["c_attn"])
    model = peft_model(path, targets)
    rng = np.random.default_rng(5)
    seqs = [rng.integers(3, VOCAB, int(L)) for L in (14, 20, 11, 17)]
    masks = [np.arange(len(x)) >= len(x) - 3 for x in seqs]  # the last 3 tokens
    pe = PerExampleGradients(model, strategy="hooks")
    batch = collate(seqs, masks, pad_id=0)
    kept = loss_positions(batch)
    assert len(kept) == 12 < batch.input_ids.shape[1] - 1  # the prompts' starts left out
    G, losses = pe(batch)
    assert pe.keeps_logits is True
    for b in range(len(seqs)):
        ref, ref_loss = autograd_one(model, seqs[b], masks[b])
        assert float((G[b] - ref).norm() / ref.norm()) < 1e-5
        assert abs(float(losses[b]) - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))


def test_order_follows_named_parameters(llama_dir):
    model = peft_model(llama_dir, ["q_proj"])
    pe = PerExampleGradients(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert pe.names == names
    assert pe.num_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_non_lora_trainable_falls_back_to_loop(llama_dir):
    model = peft_model(llama_dir, ["q_proj"])
    model.base_model.model.lm_head.weight.requires_grad_(True)
    with pytest.warns(UserWarning, match="one example at a time"):
        pe = PerExampleGradients(model)
    assert pe.strategy == "loop"
    rng = np.random.default_rng(2)
    seqs, masks = random_examples(rng, 2)
    G, _ = pe(collate(seqs, masks, pad_id=0))
    ref, _ = autograd_one(model, seqs[1], masks[1])
    assert float((G[1] - ref).norm() / ref.norm()) < 1e-5


def test_layer_used_twice_sums_both_uses(llama_dir):
    """Weight sharing: a LoRA layer applied twice in one forward gets both gradient terms."""
    model = peft_model(llama_dir, LLAMA_TARGETS)
    layers = model.base_model.model.model.layers
    shared = torch.nn.ModuleList([layers[0], layers[1], layers[0]])
    model.base_model.model.model.layers = shared
    model.base_model.model.config.num_hidden_layers = 3
    rng = np.random.default_rng(3)
    seqs, masks = random_examples(rng, 3)
    G, _ = PerExampleGradients(model, strategy="hooks")(collate(seqs, masks, pad_id=0))
    for b in range(3):
        ref, _ = autograd_one(model, seqs[b], masks[b])
        assert float((G[b] - ref).norm() / ref.norm()) < 1e-5
