"""`store.ingest` end to end on tiny models: stored vectors against plain autograd."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

import gradstore
from gradstore.errors import GradstoreError
from gradstore.grads.data import read_records
from gradstore.grads.examples import tokenize_records
from gradstore.grads.projection import make_projector
from tests.grads.models import load

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
WORDS = "the cat dog sea star capital France Paris two plus four nine poem night fox".split()


def sentence(rng, lo=3, hi=12) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))


def write_chat_data(path: Path, n: int, seed: int = 0, subtasks: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i in range(n):
            row = {
                "id": f"ex{i}",
                "messages": [
                    {"role": "user", "content": sentence(rng)},
                    {"role": "assistant", "content": sentence(rng)},
                ],
            }
            if subtasks:
                row["subject"] = ["geo", "math"][i % 2]
            f.write(json.dumps(row) + "\n")
    return path


def train_checkpoints(model_dir: Path, out: Path, steps=(3, 3), lr=1e-2) -> list[Path]:
    """A real short LoRA run with torch AdamW; adapter + optimizer state per checkpoint."""
    torch.manual_seed(0)
    model = get_peft_model(load(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.8, 0.95), eps=1e-6)
    rng = np.random.default_rng(0)
    paths = []
    for c, n in enumerate(steps):
        for _ in range(n):
            ids = torch.tensor(rng.integers(5, 250, (4, 16)))
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        path = out / f"checkpoint-{c + 1}"
        model.save_pretrained(path)
        # as the Trainer saves it (optimizer.pt), and as accelerate does (optimizer.bin)
        torch.save(opt.state_dict(), path / ("optimizer.pt" if c == 0 else "optimizer.bin"))
        paths.append(path)
    (paths[0] / "gradstore_checkpoint.json").write_text(json.dumps({"lr": 2e-3}))
    return paths


@pytest.fixture(scope="module")
def checkpoints(llama_dir, tmp_path_factory):
    return train_checkpoints(llama_dir, tmp_path_factory.mktemp("warmup"))


def reference_vectors(model_dir, ckpt, data, tokenizer, grad_type, proj, max_length=2048):
    """Per-example gradients one at a time with HF's loss, transformed and projected by hand."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load(model_dir), ckpt, is_trainable=True).eval()
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    report = tokenize_records(read_records(data), tokenizer, max_length=max_length)
    if grad_type == "adam":
        state = torch.load(next(ckpt.glob("optimizer.*")), weights_only=True)
        group = state["param_groups"][0]
        (b1, b2), eps = group["betas"], group["eps"]
        m = torch.cat([state["state"][i]["exp_avg"].reshape(-1) for i in group["params"]])
        v = torch.cat([state["state"][i]["exp_avg_sq"].reshape(-1) for i in group["params"]])
    out, losses = {}, {}
    for ex in report.examples:
        ids = torch.tensor(ex.input_ids)[None]
        labels = torch.where(torch.tensor(ex.loss_mask)[None], ids, -100)
        loss = model(input_ids=ids, labels=labels).loss
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)])
        if grad_type == "adam":
            mm = b1 * m + (1 - b1) * g
            vv = b2 * v + (1 - b2) * g * g
            g = mm / (vv.sqrt() + eps)
        elif grad_type == "sign":
            g = g.sign()
        out[ex.id] = (g @ proj).numpy() if proj is not None else g.numpy()
        losses[ex.id] = float(loss)
    return out, losses


def stored(store, table, checkpoint):
    ids, X = store.vectors(table, checkpoint)
    return dict(zip(ids, X, strict=True))


def test_adam_vectors_equal_formula_by_hand(tmp_path, llama_dir, checkpoints, chat_tokenizer):
    data = write_chat_data(tmp_path / "pool.jsonl", 10)
    store = gradstore.open(tmp_path / "store")
    summary = store.ingest(
        "pool", model=str(llama_dir), data=str(data), checkpoints=checkpoints,
        projection="rademacher", proj_dim=64, vector_dtype="float32", batch_size=4,
        device="cpu", progress=False,
    )
    assert summary.grad_type == "adam" and summary.rows_written == 10
    meta = store.meta("pool")
    assert meta.checkpoint_names == ["checkpoint-1", "checkpoint-2"]
    # lr from gradstore_checkpoint.json, then from the optimizer's param group
    assert meta.lrs == [pytest.approx(2e-3), pytest.approx(1e-2)]
    P = meta.projection.input_dim
    proj = make_projector("rademacher", P, 64, seed=0).matrix_rows(0, P)
    for ckpt in checkpoints:
        ref, ref_loss = reference_vectors(llama_dir, ckpt, data, chat_tokenizer, "adam", proj)
        got = stored(store, "pool", ckpt.name)
        assert set(got) == set(ref)
        for i in ref:
            rel = np.linalg.norm(got[i] - ref[i]) / np.linalg.norm(ref[i])
            assert rel < 1e-4, (ckpt.name, i, rel)
    tbl = store.database.dataset("pool").to_table(
        columns=["id", "loss_1", "tokens", "content_hash"])
    rows = {r["id"]: r for r in tbl.to_pylist()}
    for i, want in ref_loss.items():  # checkpoint-2's loss
        assert rows[i]["loss_1"] == pytest.approx(want, rel=1e-5)
        assert rows[i]["tokens"] > 0 and len(rows[i]["content_hash"]) == 32


@pytest.mark.parametrize("grad_type", ["sgd", "sign"])
def test_raw_gradients_without_projection(tmp_path, llama_dir, checkpoints, chat_tokenizer,
                                          grad_type):
    data = write_chat_data(tmp_path / "t.jsonl", 5, seed=3)
    store = gradstore.open(tmp_path / "store")
    store.ingest(
        "t", model=str(llama_dir), data=str(data), checkpoints=checkpoints[1:],
        kind="target", projection="none", grad_type=grad_type, vector_dtype="float32",
        device="cpu", progress=False,
    )
    ref, _ = reference_vectors(llama_dir, checkpoints[1], data, chat_tokenizer, grad_type, None)
    got = stored(store, "t", "checkpoint-2")
    for i in ref:
        if grad_type == "sign":  # signs of tiny entries may flip with rounding
            assert np.mean(got[i] == ref[i]) > 0.99
        else:
            assert np.linalg.norm(got[i] - ref[i]) / np.linalg.norm(ref[i]) < 1e-5


def test_gpt2_fresh_lora_and_defaults(tmp_path, gpt2_dir, plain_tokenizer):
    """GPT-2 (Conv1D layers), a fresh seeded LoRA, targets default to sgd."""
    data = write_chat_data(tmp_path / "d.jsonl", 6, seed=5)
    store = gradstore.open(tmp_path / "store")
    kw = dict(model=str(gpt2_dir), data=str(data), proj_dim=32, device="cpu", progress=False,
              lora_r=2, lora_alpha=4)
    s1 = store.ingest("a", kind="target", **kw)
    s2 = store.ingest("b", kind="pool", **kw)
    assert s1.grad_type == s2.grad_type == "sgd"  # no optimizer state: sgd for pools too
    _, A = store.vectors("a")
    _, B = store.vectors("b")
    # the same seed gives the same fresh adapter and projection in separate runs
    np.testing.assert_allclose(A, B, rtol=1e-3, atol=1e-4)
    assert np.abs(A).sum() > 0
    assert store.meta("a").checkpoint_names == ["init"]
    store.ingest("c", kind="target", lora_targets=["c_attn"], **kw)
    rerun = store.ingest("c", kind="target", lora_targets=["c_attn"], **kw)
    assert rerun.status == "complete, nothing to do"


def test_pool_and_target_select(tmp_path, llama_dir, checkpoints):
    pool = write_chat_data(tmp_path / "pool.jsonl", 16, seed=1)
    target = write_chat_data(tmp_path / "target.jsonl", 4, seed=2, subtasks=True)
    store = gradstore.open(tmp_path / "store")
    kw = dict(model=str(llama_dir), checkpoints=checkpoints, proj_dim=64, device="cpu",
              progress=False)
    store.ingest("pool", data=str(pool), **kw)
    # checkpoints given in another order are put in training order
    target_kw = dict(kw, checkpoints=checkpoints[::-1])
    store.ingest("target", data=str(target), kind="target", subtask_field="subject",
                 **target_kw)
    assert store.meta("target").checkpoint_names == ["checkpoint-1", "checkpoint-2"]
    assert store.meta("target").grad_types == ["adam", "sgd"]  # what GTP and LESS read
    assert sorted(set(store.subtasks("target"))) == ["geo", "math"]
    sel = store.select("pool", target="target", budget=4)
    assert 1 <= len(sel.ids) <= 4 and 0 <= sel.residual < 1  # NNLS may use fewer
    # a target ingested with another projection seed is refused by select
    store.ingest("other", data=str(target), kind="target", seed=1, **kw)
    with pytest.raises(GradstoreError, match="projection"):
        store.select("pool", target="other", budget=4)


class Crash(Exception):
    pass


def crash_on_append(monkeypatch, store, nth: int) -> None:
    """Make the store's nth append fail, as a process dying mid-run would."""
    real_append = store.database.append_rows
    calls = {"n": 0}

    def append_then_die(table, block):
        calls["n"] += 1
        if calls["n"] == nth:
            raise Crash()
        real_append(table, block)

    monkeypatch.setattr(store.database, "append_rows", append_then_die)


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, llama_dir, checkpoints,
                                                     monkeypatch):
    data = write_chat_data(tmp_path / "pool.jsonl", 23, seed=4)
    kw = dict(model=str(llama_dir), data=str(data), checkpoints=checkpoints, proj_dim=32,
              device="cpu", progress=False, batch_size=3, write_rows=5)
    full = gradstore.open(tmp_path / "full")
    full.ingest("pool", **kw)

    crashed = gradstore.open(tmp_path / "crashed")
    crash_on_append(monkeypatch, crashed, 3)
    with pytest.raises(Crash):
        crashed.ingest("pool", **kw)
    monkeypatch.undo()
    partial = crashed.num_rows("pool")
    assert 0 < partial < 23
    assert crashed.meta("pool").incomplete
    with pytest.raises(GradstoreError, match="incomplete"):
        crashed.select("pool", budget=3)

    summary = crashed.ingest("pool", **kw)
    assert summary.rows_present == partial and summary.rows_written == 23 - partial
    ids_full, X_full = full.vectors("pool")
    ids_res, X_res = crashed.vectors("pool")
    assert ids_res == ids_full  # same order (by row), no duplicates
    np.testing.assert_allclose(X_res, X_full, rtol=1e-3, atol=1e-5)
    assert not crashed.meta("pool").incomplete
    again = crashed.ingest("pool", **kw)  # a finished table is not recomputed
    assert again.rows_written == 0 and again.status.startswith("complete, nothing")


def test_rerun_with_other_settings_or_data_is_refused(tmp_path, llama_dir, checkpoints):
    data = write_chat_data(tmp_path / "pool.jsonl", 4, seed=6)
    store = gradstore.open(tmp_path / "store")
    kw = dict(model=str(llama_dir), checkpoints=checkpoints, proj_dim=32, device="cpu",
              progress=False)
    store.ingest("pool", data=str(data), **kw)
    before = store.vectors("pool")[1]
    with pytest.raises(GradstoreError, match="grad_type"):
        store.ingest("pool", data=str(data), grad_type="sgd", **kw)
    other = write_chat_data(tmp_path / "other.jsonl", 4, seed=7)
    with pytest.raises(GradstoreError, match="different data"):
        store.ingest("pool", data=str(other), **kw)
    np.testing.assert_array_equal(store.vectors("pool")[1], before)  # nothing changed
    bad_model = dict(kw, model=str(tmp_path))
    with pytest.raises(GradstoreError, match="cannot load"):
        store.ingest("pool", data=str(other), overwrite=True, **bad_model)
    np.testing.assert_array_equal(store.vectors("pool")[1], before)  # overwrite failed early
    s = store.ingest("pool", data=str(other), overwrite=True, **kw)
    assert s.rows_written == 4


def test_skipped_examples_are_counted(tmp_path, llama_dir):
    path = tmp_path / "d.jsonl"
    rows = [
        {"prompt": "two plus two", "completion": " four"},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"prompt": "the cat", "completion": " sat"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = gradstore.open(tmp_path / "store")
    s = store.ingest("t", model=str(llama_dir), data=str(path), proj_dim=16, device="cpu",
                     progress=False)
    assert s.rows_written == 2 and s.skipped == {"no response tokens": 1}
    assert s.skipped_ids["no response tokens"] == ["1"]
    assert store.ids("t") == ["0", "2"]


def test_bad_inputs_raise_one_clear_error(tmp_path, llama_dir, checkpoints):
    data = write_chat_data(tmp_path / "d.jsonl", 3)
    store = gradstore.open(tmp_path / "store")
    kw = dict(model=str(llama_dir), device="cpu", progress=False)
    with pytest.raises(GradstoreError, match="optimizer state"):
        store.ingest("t", data=str(data), grad_type="adam", **kw)
    with pytest.raises(GradstoreError, match="does not exist"):
        store.ingest("t", data=str(data), checkpoints=[tmp_path / "nope"], **kw)
    with pytest.raises(GradstoreError, match="proj-dim"):
        store.ingest("t", data=str(data), proj_dim=0, **kw)
    with pytest.raises(GradstoreError, match="cannot load"):
        store.ingest("t", data=str(data), model=str(tmp_path), device="cpu", progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(GradstoreError, match="no example"):
        store.ingest("t", data=str(empty), **kw)
    assert store.tables() == []


def test_optimizer_state_for_another_adapter_is_refused(tmp_path, llama_dir, checkpoints):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in checkpoints[0].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    state = torch.load(bad / "optimizer.pt", weights_only=True)
    first = state["param_groups"][0]["params"]
    state["param_groups"][0]["params"] = first[1:] + first[:1]  # rotated: shapes disagree
    torch.save(state, bad / "optimizer.pt")
    data = write_chat_data(tmp_path / "d.jsonl", 2)
    store = gradstore.open(tmp_path / "store")
    with pytest.raises(GradstoreError, match="does not belong"):
        store.ingest("t", model=str(llama_dir), data=str(data), checkpoints=[bad],
                     device="cpu", progress=False)


def test_hf_trainer_checkpoints_as_less_writes_them(tmp_path, llama_dir, chat_tokenizer):
    """A real Trainer run (LESS's warm-up): optimizer.pt, trainer_state.json, adapter files."""
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(load(llama_dir), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(8):
        ids = rng.integers(5, 250, 12).tolist()
        rows.append({"input_ids": ids, "labels": ids, "attention_mask": [1] * 12})
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=4,
        learning_rate=5e-3, lr_scheduler_type="linear", save_strategy="epoch",
        logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )
    Trainer(model=model, args=args, train_dataset=rows).train()
    ckpts = sorted((tmp_path / "out").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    assert len(ckpts) == 2 and all((c / "optimizer.pt").exists() for c in ckpts)

    data = write_chat_data(tmp_path / "pool.jsonl", 4, seed=8)
    store = gradstore.open(tmp_path / "store")
    store.ingest("pool", model=str(llama_dir), data=str(data), checkpoints=ckpts,
                 projection="none", vector_dtype="float32", device="cpu", progress=False)
    meta = store.meta("pool")
    log = json.loads((ckpts[1] / "trainer_state.json").read_text())["log_history"]
    steps = [int(c.name[11:]) for c in ckpts]
    for c, lo, hi in zip(range(2), [0, steps[0]], steps, strict=True):
        lrs = [e["learning_rate"] for e in log if "learning_rate" in e and lo < e["step"] <= hi]
        assert meta.lrs[c] == pytest.approx(sum(lrs) / len(lrs))  # the epoch's mean lr
    for ckpt in ckpts:
        ref, _ = reference_vectors(llama_dir, ckpt, data, chat_tokenizer, "adam", None)
        got = stored(store, "pool", ckpt.name)
        for i in ref:
            assert np.linalg.norm(got[i] - ref[i]) / np.linalg.norm(ref[i]) < 1e-5


def test_non_finite_gradients_are_skipped_and_reported(tmp_path, llama_dir, checkpoints):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoints[1].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "adapter_model.safetensors")
    save_file({k: v * 1e30 if "lora_B" in k else v for k, v in weights.items()},
              broken / "adapter_model.safetensors")
    data = write_chat_data(tmp_path / "d.jsonl", 3)
    store = gradstore.open(tmp_path / "store")
    kw = dict(model=str(llama_dir), data=str(data), checkpoints=[broken], grad_type="sgd",
              proj_dim=8, device="cpu", progress=False)
    s = store.ingest("t", **kw)
    reason = "non-finite gradient or loss (try --dtype float32)"
    assert s.rows_written == 0 and s.skipped == {reason: 3}
    assert sorted(s.skipped_ids[reason]) == ["ex0", "ex1", "ex2"]
    assert store.num_rows("t") == 0 and not store.meta("t").incomplete
    again = store.ingest("t", **kw)  # the skipped examples are not recomputed
    assert again.status.startswith("complete, nothing")


def test_bfloat16_model_gives_close_gradients(tmp_path, llama_dir, checkpoints):
    data = write_chat_data(tmp_path / "d.jsonl", 4, seed=11)
    store = gradstore.open(tmp_path / "store")
    kw = dict(model=str(llama_dir), data=str(data), checkpoints=checkpoints[:1],
              grad_type="sgd", projection="none", vector_dtype="float32", device="cpu",
              progress=False)
    store.ingest("f32", dtype="float32", **kw)
    store.ingest("bf16", dtype="bfloat16", **kw)
    _, A = store.vectors("f32")
    _, B = store.vectors("bf16")
    cos = (A * B).sum(1) / np.linalg.norm(A, axis=1) / np.linalg.norm(B, axis=1)
    assert cos.min() > 0.98, cos


def test_ctrl_c_commits_what_was_computed(tmp_path, llama_dir, monkeypatch):
    from gradstore.grads import runner as runner_module

    data = write_chat_data(tmp_path / "d.jsonl", 12, seed=12)
    store = gradstore.open(tmp_path / "store")
    kw = dict(model=str(llama_dir), data=str(data), proj_dim=8, device="cpu", progress=False,
              batch_size=2, write_rows=5, flush_seconds=1e9)  # chunks of 4: one buffered
    real_chunk = runner_module.GradientRunner._chunk
    calls = {"n": 0}

    def chunk_then_ctrl_c(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_chunk(self, *args)

    monkeypatch.setattr(runner_module.GradientRunner, "_chunk", chunk_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        store.ingest("t", **kw)
    assert store.num_rows("t") == 4  # the buffered chunk was committed on the way out
    monkeypatch.undo()
    s = store.ingest("t", **kw)
    assert s.rows_present == 4 and s.rows_written == 8 and store.num_rows("t") == 12


def test_checkpoint_from_another_base_model_is_refused(tmp_path, llama_dir, gpt2_dir,
                                                        checkpoints):
    data = write_chat_data(tmp_path / "d.jsonl", 2)
    store = gradstore.open(tmp_path / "store")
    # LoRA on q/k/v/o: those modules do not exist in GPT-2
    with pytest.raises(GradstoreError, match="another base model"):
        store.ingest("t", model=str(gpt2_dir), data=str(data), checkpoints=checkpoints[:1],
                     grad_type="sgd", device="cpu", progress=False)
    # same module names, other sizes: a wider Llama
    from transformers import LlamaConfig, LlamaForCausalLM

    wide = tmp_path / "wide"
    LlamaForCausalLM(LlamaConfig(
        vocab_size=300, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )).save_pretrained(wide)
    for f in llama_dir.glob("*token*"):
        (wide / f.name).write_bytes(f.read_bytes())
    with pytest.raises(GradstoreError, match="do not fit the model"):
        store.ingest("t", model=str(wide), data=str(data), checkpoints=checkpoints[:1],
                     grad_type="sgd", device="cpu", progress=False)
    assert store.tables() == []


def test_fsdp_name_keyed_optimizer_state(tmp_path, llama_dir, checkpoints, chat_tokenizer):
    """LESS's warm-up ran under FSDP: optimizer.bin keyed by (wrapped) parameter names."""
    ckpt = tmp_path / "checkpoint-9"
    ckpt.mkdir()
    for f in checkpoints[0].iterdir():
        if not f.name.startswith("optimizer"):
            (ckpt / f.name).write_bytes(f.read_bytes())
    state = torch.load(checkpoints[0] / "optimizer.pt", weights_only=True)
    model = get_peft_model(load(llama_dir), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    wrapped = [n.replace("model.layers.", "model._fsdp_wrapped_module.layers.") for n in names]
    order = list(range(len(names)))[::-1]  # saved in another order: must be matched by name
    group = dict(state["param_groups"][0], params=[wrapped[i] for i in order])
    fsdp = {"state": {wrapped[i]: state["state"][i] for i in order}, "param_groups": [group]}
    torch.save(fsdp, ckpt / "optimizer.bin")
    data = write_chat_data(tmp_path / "d.jsonl", 3, seed=13)
    store = gradstore.open(tmp_path / "store")
    store.ingest("pool", model=str(llama_dir), data=str(data), checkpoints=[ckpt],
                 projection="none", vector_dtype="float32", device="cpu", progress=False)
    ref, _ = reference_vectors(llama_dir, checkpoints[0], data, chat_tokenizer, "adam", None)
    got = stored(store, "pool", "checkpoint-9")
    for i in ref:
        assert np.linalg.norm(got[i] - ref[i]) / np.linalg.norm(ref[i]) < 1e-5


def test_checkpoint_dirs_sort_in_training_order(tmp_path):
    from gradstore.grads.ingestion import natural_key

    given = [str(tmp_path / f"checkpoint-{s}") for s in (105, 21, 1050, 42)]
    ordered = sorted(given, key=natural_key)
    assert [Path(p).name for p in ordered] == [
        "checkpoint-21", "checkpoint-42", "checkpoint-105", "checkpoint-1050"
    ]


def test_adding_a_checkpoint_to_a_finished_table(tmp_path, llama_dir, checkpoints,
                                                 monkeypatch):
    """A later run with one more checkpoint computes only that one, resumably."""
    data = write_chat_data(tmp_path / "pool.jsonl", 9, seed=14)
    target = write_chat_data(tmp_path / "target.jsonl", 3, seed=15)
    kw = dict(model=str(llama_dir), data=str(data), proj_dim=32, device="cpu", progress=False,
              batch_size=2, write_rows=3)
    ref = gradstore.open(tmp_path / "ref")
    ref.ingest("pool", checkpoints=checkpoints, **kw)

    store = gradstore.open(tmp_path / "store")
    store.ingest("pool", checkpoints=checkpoints[1:], **kw)  # the later one first
    before = store.vectors("pool", "checkpoint-2")[1]
    crash_on_append(monkeypatch, store, 2)
    with pytest.raises(Crash):
        store.ingest("pool", checkpoints=checkpoints, **kw)
    monkeypatch.undo()
    assert store.meta("pool").checkpoint_names == ["checkpoint-2"]  # untouched meanwhile
    s = store.ingest("pool", checkpoints=checkpoints, **kw)
    assert s.status == "complete, added checkpoints checkpoint-1"
    assert s.rows_present == 3 and s.rows_written == 6  # resumed from the staging table
    assert store.tables() == ["pool"]  # the staging table is gone
    meta = store.meta("pool")
    assert meta.checkpoint_names == ["checkpoint-2", "checkpoint-1"]
    assert meta.lrs == ref.meta("pool").lrs[::-1]
    np.testing.assert_array_equal(store.vectors("pool", "checkpoint-2")[1], before)
    ids, added = store.vectors("pool", "checkpoint-1")
    ref_ids, expected = ref.vectors("pool", "checkpoint-1")
    assert ids == ref_ids
    np.testing.assert_allclose(added, expected, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(store.losses("pool", "checkpoint-1"),
                               ref.losses("pool", "checkpoint-1"), rtol=1e-5)
    again = store.ingest("pool", checkpoints=checkpoints, **kw)
    assert again.status == "complete, nothing to do"
    # a target ingested in one run (training order) matches the pool's column order
    store.ingest("t", data=str(target), kind="target", checkpoints=checkpoints,
                 **{k: v for k, v in kw.items() if k != "data"})
    ref.ingest("t", data=str(target), kind="target", checkpoints=checkpoints,
               **{k: v for k, v in kw.items() if k != "data"})
    got = store.select("pool", target="t", budget=3, method="less")
    want = ref.select("pool", target="t", budget=3, method="less")
    assert got.ids == want.ids


def test_crash_after_columns_added_before_bookkeeping(tmp_path, llama_dir, checkpoints,
                                                      monkeypatch):
    data = write_chat_data(tmp_path / "pool.jsonl", 3, seed=16)
    kw = dict(model=str(llama_dir), data=str(data), proj_dim=16, device="cpu", progress=False)
    store = gradstore.open(tmp_path / "store")
    store.ingest("pool", checkpoints=checkpoints[:1], **kw)
    real_update = store.database.update_ingest_state

    def die_on_main_table(table, state):
        if table == "pool":
            raise Crash()
        real_update(table, state)

    monkeypatch.setattr(store.database, "update_ingest_state", die_on_main_table)
    with pytest.raises(Crash):
        store.ingest("pool", checkpoints=checkpoints, **kw)
    monkeypatch.undo()
    assert store.meta("pool").checkpoint_names == ["checkpoint-1", "checkpoint-2"]
    s = store.ingest("pool", checkpoints=checkpoints, **kw)
    assert s.status == "complete, added checkpoints (finished)" and s.rows_written == 0
    assert store.tables() == ["pool"]
    assert store.ingest("pool", checkpoints=checkpoints, **kw).status.endswith("nothing to do")
