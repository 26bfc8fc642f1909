"""`gradstore.warmup` on a tiny Llama: schedule, optimizer state, resume, refusal, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.utils import load_peft_weights
from transformers import get_linear_schedule_with_warmup

import gradstore
from gradstore.config import TrainConfig, WarmupConfig
from gradstore.errors import GradstoreError
from gradstore.grads import warmup as warmup_module
from gradstore.grads.data import read_records
from gradstore.grads.examples import tokenize_records
from gradstore.grads.projection import make_projector
from gradstore.grads.warmup import choose_subset, warmup
from tests.grads.models import load
from tests.grads.test_ingest import (
    reference_vectors,
    stored,
    write_chat_data,
)


def base(llama_dir, data, out, **kw) -> WarmupConfig:
    opts = dict(model=str(llama_dir), data=str(data), out=str(out), fraction=0.5, epochs=3,
                batch_size=4, lr=1e-2, warmup_ratio=0.1, progress=False)
    return WarmupConfig.from_options(**(opts | kw))


def hf_epoch_lrs(peak: float, steps_per_epoch: int, epochs: int, warmup_ratio: float):
    """Mean lr of each epoch's optimizer steps under transformers' own linear schedule."""
    total = steps_per_epoch * epochs
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(warmup_ratio * total), total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return [float(np.mean(lrs[e * steps_per_epoch:(e + 1) * steps_per_epoch]))
            for e in range(epochs)], opt.param_groups[0]["lr"]


def test_checkpoints_follow_the_schedule_and_ingest_accepts_them(tmp_path, llama_dir,
                                                                 chat_tokenizer):
    data = write_chat_data(tmp_path / "pool.jsonl", 40)
    summary = warmup(base(llama_dir, data, tmp_path / "warm"))
    # 20 examples, batches of 4: 5 steps per epoch, 15 in all, 2 of them warm-up
    assert [c.step for c in summary.checkpoints] == [5, 10, 15]
    paths = [tmp_path / "warm" / f"checkpoint-{s}" for s in (5, 10, 15)]
    assert all(p.is_dir() for p in paths)
    expected, last = hf_epoch_lrs(1e-2, 5, 3, 0.1)
    got = [json.loads((p / "gradstore_checkpoint.json").read_text())["lr"] for p in paths]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert summary.checkpoints[-1].lr_at_end == pytest.approx(last) == 0.0
    assert summary.checkpoints[-1].mean_loss < summary.checkpoints[0].mean_loss

    store = gradstore.open(tmp_path / "store")
    res = store.ingest("pool", model=str(llama_dir), data=str(data), vector_dtype="float32",
                       checkpoints=[str(p) for p in paths], proj_dim=64, progress=False)
    assert res.rows_written == 40
    meta = store.meta("pool")
    assert meta.grad_type == "adam"
    np.testing.assert_allclose(meta.lrs, expected, rtol=1e-6)
    # the saved moments belong to the right parameters: Adam vectors equal the hand formula
    P = meta.projection.input_dim
    proj = make_projector("rademacher", P, 64, seed=0).matrix_rows(0, P)
    ref, _ = reference_vectors(llama_dir, paths[1], data, chat_tokenizer, "adam", proj)
    got = stored(store, "pool", "checkpoint-10")
    for i in ref:
        rel = np.linalg.norm(got[i] - ref[i]) / np.linalg.norm(ref[i])
        assert rel < 1e-4, (i, rel)


def test_one_step_equals_plain_hf_training(tmp_path, llama_dir):
    """One optimizer step on all examples equals HF's loss + torch AdamW done by hand."""
    data = write_chat_data(tmp_path / "pool.jsonl", 6)
    cfg = base(llama_dir, data, tmp_path / "warm", fraction=1.0, epochs=1, batch_size=6,
               warmup_ratio=0.0, max_grad_norm=0.0, lr=1e-3, weight_decay=0.01)
    warmup(cfg)
    got = load_peft_weights(str(tmp_path / "warm" / "checkpoint-1"), device="cpu")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_dir)
    exs = tokenize_records(read_records(data), tok).examples
    torch.manual_seed(0)
    model = get_peft_model(load(llama_dir), LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.0, bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    width = max(len(e.input_ids) for e in exs)
    ids = torch.zeros(len(exs), width, dtype=torch.long)
    att = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(exs):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        att[i, :n] = 1
        labels[i, :n] = torch.where(torch.tensor(e.loss_mask), ids[i, :n], -100)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    model(input_ids=ids, attention_mask=att, labels=labels).loss.backward()
    opt.step()
    want = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(got) == len(want) > 0
    for k, v in want.items():
        key = k.replace(".default", "")
        torch.testing.assert_close(got[key], v, rtol=1e-5, atol=1e-7)


def test_loss_weights_equal_a_weighted_loss_by_hand(tmp_path, llama_dir):
    """One step with per-example loss weights (a field of the rows, scaled to mean 1) equals
    the weighted sum of each example's token cross-entropies, by hand, and torch AdamW."""
    data = write_chat_data(tmp_path / "pool.jsonl", 6)
    raw = [0.0, 1.0, 2.0, 3.0, 0.5, 1.5]
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps(r | {"w": w}) + "\n" for r, w in zip(rows, raw,
                                                                         strict=True)))
    cfg = base(llama_dir, data, tmp_path / "warm", fraction=1.0, epochs=1, batch_size=6,
               warmup_ratio=0.0, max_grad_norm=0.0, lr=1e-3, weight_field="w")
    warmup(cfg)
    got = load_peft_weights(str(tmp_path / "warm" / "checkpoint-1"), device="cpu")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_dir)
    exs = tokenize_records(read_records(data), tok).examples
    torch.manual_seed(0)
    model = get_peft_model(load(llama_dir), LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.0, bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    total, tokens = 0.0, 0
    for e, w in zip(exs, raw, strict=True):  # one example at a time
        ids = torch.tensor(e.input_ids)[None]
        labels = torch.where(torch.tensor(e.loss_mask)[None], ids, -100)
        n = int(e.loss_mask[1:].sum())
        total = total + model(input_ids=ids, labels=labels).loss * n * (w * 6 / sum(raw))
        tokens += n
    (total / tokens).backward()
    opt.step()
    want = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    for k, v in want.items():
        torch.testing.assert_close(got[k.replace(".default", "")], v, rtol=1e-5, atol=1e-7)
    with pytest.raises(GradstoreError, match="loss weight field 'w' is 'x'"):
        data.write_text(data.read_text().replace('"w": 2.0', '"w": "x"'))
        warmup(base(llama_dir, data, tmp_path / "warm2", fraction=1.0, weight_field="w"))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, llama_dir, monkeypatch):
    data = write_chat_data(tmp_path / "pool.jsonl", 24)
    kw = dict(lora_dropout=0.2, epochs=3)
    full = warmup(base(llama_dir, data, tmp_path / "a", **kw))

    real_save = warmup_module.Trainer.save
    calls = {"n": 0}

    def save_then_stop(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(warmup_module.Trainer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        warmup(base(llama_dir, data, tmp_path / "b", **kw))
    monkeypatch.setattr(warmup_module.Trainer, "save", real_save)
    assert len(list((tmp_path / "b").glob("checkpoint-*"))) == 2
    resumed = warmup(base(llama_dir, data, tmp_path / "b", **kw))
    assert resumed.resumed_from == 2
    assert [c.step for c in resumed.checkpoints] == [c.step for c in full.checkpoints]
    for ca, cb in zip(full.checkpoints, resumed.checkpoints, strict=True):
        wa, wb = load_peft_weights(ca.path, device="cpu"), load_peft_weights(cb.path, device="cpu")
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
        assert ca.lr == cb.lr
    again = warmup(base(llama_dir, data, tmp_path / "b", **kw))
    assert again.status == "already complete"


def test_other_settings_are_refused_then_overwritten(tmp_path, llama_dir):
    data = write_chat_data(tmp_path / "pool.jsonl", 12)
    warmup(base(llama_dir, data, tmp_path / "w", epochs=1))
    with pytest.raises(GradstoreError, match="other settings.*lr"):
        warmup(base(llama_dir, data, tmp_path / "w", epochs=1, lr=5e-3))
    s = warmup(base(llama_dir, data, tmp_path / "w", epochs=1, lr=5e-3, overwrite=True))
    assert s.status == "complete" and len(s.checkpoints) == 1


def test_subset_is_seeded_and_sized(tmp_path):
    data = write_chat_data(tmp_path / "pool.jsonl", 200)
    recs = read_records(data)
    cfg = TrainConfig(fraction=0.05)
    a, b = choose_subset(recs, cfg), choose_subset(recs, cfg)
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 10
    other = choose_subset(recs, TrainConfig(seed=1))
    assert [r.id for r in other] != [r.id for r in a]
    assert len(choose_subset(recs, TrainConfig(num_examples=33))) == 33


def test_top_layers_only_and_ingest_follows(tmp_path, llama_dir):
    data = write_chat_data(tmp_path / "pool.jsonl", 8)
    s = warmup(base(llama_dir, data, tmp_path / "w", epochs=1, fraction=1.0,
                    lora_layers="top:1"))
    keys = load_peft_weights(s.checkpoints[0].path, device="cpu").keys()
    assert keys and all(".layers.1." in k for k in keys)
    store = gradstore.open(tmp_path / "store")
    store.ingest("pool", model=str(llama_dir), data=str(data), checkpoints=s.checkpoint_paths,
                 projection="none", progress=False)
    # 4 modules x (A: 8x32 + B: out x 8) on layer 1 only; k/v project to 16 dims (2 kv heads)
    assert store.meta("pool").dim == 2 * (8 * 32 + 32 * 8) + 2 * (8 * 32 + 16 * 8)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(fraction=0.0), "--fraction"),
        (dict(epochs=0), "--epochs"),
        (dict(lr=-1.0), "--lr"),
        (dict(lora_layers="top:x"), "--lora-layers"),
        (dict(lora_layers="top:9"), "model has 2"),
        (dict(num_examples=1000), "exceeds"),
        (dict(data="missing.jsonl"), "does not exist"),
    ],
)
def test_bad_input(tmp_path, llama_dir, kw, match):
    data = write_chat_data(tmp_path / "pool.jsonl", 8)
    if "data" in kw:
        data = tmp_path / kw.pop("data")
    with pytest.raises(GradstoreError, match=match):
        warmup(base(llama_dir, data, tmp_path / "w", **({"epochs": 1} | kw)))
    assert not list((tmp_path / "w").glob("checkpoint-*"))


def test_no_trainable_examples(tmp_path, llama_dir):
    data = tmp_path / "empty_answers.jsonl"
    row = {"messages": [{"role": "user", "content": "only a question"}]}
    data.write_text("".join(json.dumps(row | {"id": i}) + "\n" for i in range(4)))
    with pytest.raises(GradstoreError, match="no.*response|response token"):
        warmup(base(llama_dir, data, tmp_path / "w", fraction=1.0, epochs=1))


def test_shared_models_load_once_and_change_nothing(tmp_path, llama_dir):
    from gradstore.grads import model as model_module

    data = write_chat_data(tmp_path / "pool.jsonl", 10)
    store = gradstore.open(tmp_path / "store")
    opts = dict(model=str(llama_dir), data=str(data), proj_dim=16, vector_dtype="float32",
                progress=False)
    with model_module.shared_models():
        s = warmup(base(llama_dir, data, tmp_path / "w", epochs=1))
        (key,) = model_module._shared["models"]  # given back after training
        shared = model_module._shared["models"][key]
        store.ingest("a", checkpoints=s.checkpoint_paths, **opts)
        store.ingest("t", kind="target", checkpoints=s.checkpoint_paths, **opts)
        assert model_module._shared["models"][key] is shared  # the same object all along
        assert not [n for n, _ in shared.named_modules() if "lora" in n]
    assert model_module._shared is None
    store.ingest("b", checkpoints=s.checkpoint_paths, **opts)  # fresh loads
    store.ingest("u", kind="target", checkpoints=s.checkpoint_paths, **opts)
    for x, y in (("a", "b"), ("t", "u")):
        np.testing.assert_array_equal(store.vectors(x)[1], store.vectors(y)[1])


def test_gradient_checkpointing_trains_the_same_weights(tmp_path, llama_dir):
    data = write_chat_data(tmp_path / "pool.jsonl", 12)
    a = warmup(base(llama_dir, data, tmp_path / "a", epochs=1))
    b = warmup(base(llama_dir, data, tmp_path / "b", epochs=1, gradient_checkpointing=True))
    wa = load_peft_weights(a.checkpoints[0].path, device="cpu")
    wb = load_peft_weights(b.checkpoints[0].path, device="cpu")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-7)
    assert float(wa[next(k for k in wa if "lora_B" in k)].abs().max()) > 0  # it trained


def test_keeping_the_last_checkpoint_only_trains_the_same_weights(tmp_path, llama_dir,
                                                                  monkeypatch):
    """``keep="last"`` (the fine-tunes of ``gradstore evaluate``) saves once, at the end:
    bit for bit the final checkpoint of the run that saves every epoch (saving reads no
    random state). Run again it is found complete; a run of the other kind is refused as
    another run's."""
    data = write_chat_data(tmp_path / "pool.jsonl", 24)
    kw = dict(lora_dropout=0.2, epochs=3)
    every = warmup(base(llama_dir, data, tmp_path / "a", **kw))
    saves = []
    real_save = warmup_module.Trainer.save
    monkeypatch.setattr(warmup_module.Trainer, "save",
                        lambda self, *a, **k: saves.append(a[1]) or real_save(self, *a, **k))
    last = warmup(base(llama_dir, data, tmp_path / "b", **kw), keep="last")
    assert saves == [2]  # the third epoch's, alone
    assert [c.step for c in last.checkpoints] == [every.checkpoints[-1].step]
    assert [p.name for p in (tmp_path / "b").glob("checkpoint-*")] == [
        f"checkpoint-{every.checkpoints[-1].step}"]
    wa = load_peft_weights(every.checkpoints[-1].path, device="cpu")
    wb = load_peft_weights(last.checkpoints[0].path, device="cpu")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    assert last.checkpoints[0].lr == every.checkpoints[-1].lr
    assert warmup(base(llama_dir, data, tmp_path / "b", **kw), keep="last").status == (
        "already complete")
    with pytest.raises(GradstoreError, match="other settings.*keep"):
        warmup(base(llama_dir, data, tmp_path / "b", **kw))
    with pytest.raises(GradstoreError, match="keep='some'"):
        warmup(base(llama_dir, data, tmp_path / "c", **kw), keep="some")
