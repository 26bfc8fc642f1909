"""Full-layer gradients (``--params``): chosen parameters of a plain model, batched hooks on
its linear layers, checked against plain autograd one example at a time."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import gradstore
from gradstore.errors import GradstoreError, TableConflict
from gradstore.grads.data import read_records
from gradstore.grads.examples import tokenize_records
from gradstore.grads.factored_projection import FactoredProjector
from gradstore.grads.param_selection import select_parameters
from gradstore.grads.per_example import PerExampleGradients, collate
from gradstore.grads.projection import make_projector
from tests.cli.test_cli import run
from tests.grads.models import load
from tests.grads.test_ingest import write_chat_data
from tests.grads.test_per_example import autograd_one, random_examples

LLAMA_PARAMS = ["model.layers.*.mlp.*_proj.weight", "lm_head.weight"]
GPT2_PARAMS = ["transformer.h.*.attn.c_attn.*", "transformer.h.1.mlp.c_proj.bias"]
# hooks accumulate in float32 (the (B, P) buffer) and the loss is taken on float32 logits;
# against a float64 reference that leaves a relative error of a few 1e-7 per parameter
# (~ sqrt(T) float32 roundings), far below what a wrong transpose, mask or term would give
TOLERANCE = 1e-5


def plain_model(path, patterns):
    model = load(path).double().eval()
    select_parameters(model, patterns)
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_full_layer_gradients_equal_autograd_one_example_at_a_time(arch, llama_dir, gpt2_dir):
    """nn.Linear weights (Llama) and Conv1D weights and biases (GPT-2), batch with padding."""
    path, patterns = (llama_dir, LLAMA_PARAMS) if arch == "llama" else (gpt2_dir, GPT2_PARAMS)
    model = plain_model(path, patterns)
    pe = PerExampleGradients(model, full_layers=True)
    assert pe.strategy == "hooks"
    if arch == "gpt2":  # Conv1D weights (in, out) and a bias are among them
        assert {"transformer.h.0.attn.c_attn.bias", "transformer.h.1.mlp.c_proj.bias"} \
            <= set(pe.names)
    seqs, masks = random_examples(np.random.default_rng(4), 5)
    batch = collate(seqs, masks, pad_id=0)
    assert int(batch.attention_mask.sum()) < batch.input_ids.numel()  # padding present
    G, losses = pe(batch)
    for b in range(5):
        ref, ref_loss = autograd_one(model, seqs[b], masks[b])
        for slot in pe.slots:  # each parameter on its own: a small bias is not drowned out
            part = slice(slot.offset, slot.offset + slot.numel)
            err = float((G[b, part].double() - ref[part]).norm() / ref[part].norm())
            assert err < TOLERANCE, (b, slot.name, err)
        assert abs(float(losses[b]) - ref_loss) < TOLERANCE * max(1.0, abs(ref_loss))


def test_factored_in_the_hooks_equals_projecting_formed_gradients(gpt2_dir):
    """The factored blocks computed from the tokens (Conv1D swaps its sides, a bias is a
    column) are the same linear map applied to the formed gradients."""
    model = plain_model(gpt2_dir, GPT2_PARAMS)
    pe = PerExampleGradients(model, full_layers=True)
    projector = FactoredProjector(pe.shapes, 96, seed=3)
    seqs, masks = random_examples(np.random.default_rng(5), 4)
    batch = collate(seqs, masks, pad_id=0)
    in_hooks, _ = pe.projected(batch, projector)
    formed = projector.project(torch.stack([autograd_one(model, s, m)[0].float()
                                            for s, m in zip(seqs, masks, strict=True)]))
    err = float((in_hooks - formed).norm() / formed.norm())
    assert err < TOLERANCE, err


def test_other_modules_fall_back_to_one_example_at_a_time(llama_dir):
    """A norm weight is not a linear layer's: every parameter is then taken one example at
    a time (the existing fallback), and still equals autograd."""
    model = plain_model(llama_dir, ["model.norm.weight", "model.layers.1.mlp.down_proj.weight"])
    with pytest.warns(UserWarning, match="one example at a time"):
        pe = PerExampleGradients(model, full_layers=True)
    assert pe.strategy == "loop"
    seqs, masks = random_examples(np.random.default_rng(6), 3)
    G, _ = pe(collate(seqs, masks, pad_id=0))
    for b in range(3):
        ref, _ = autograd_one(model, seqs[b], masks[b])
        assert float((G[b].double() - ref).norm() / ref.norm()) < TOLERANCE


def test_selection_errors_are_one_clear_line(llama_dir):
    model = load(llama_dir)
    with pytest.raises(GradstoreError, match=r"--params 'model\.layers\.\*\.mlp' matches no"):
        select_parameters(model, ["model.layers.*.mlp.*", "model.layers.*.mlp"])
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(GradstoreError, match="not of a peft"):
        select_parameters(peft, ["*"])


def reference_rows(model_dir, data, tokenizer, patterns, projector, grad_type="sgd"):
    """Per-example gradients of the chosen parameters one at a time (HF's loss), projected."""
    model = load(model_dir).eval()
    select_parameters(model, patterns)
    out = {}
    for ex in tokenize_records(read_records(data), tokenizer).examples:
        g, _ = autograd_one(model, ex.input_ids, ex.loss_mask)
        out[ex.id] = projector.project((g.sign() if grad_type == "sign" else g)[None])[0]
    return out


@pytest.mark.parametrize("kind, grad_type", [("rademacher", "sgd"), ("countsketch", "sign"),
                                             ("factored", "sgd"), ("factored", "sign")])
def test_stored_vectors_equal_autograd_at_batch_sizes_1_and_4(
        tmp_path, llama_dir, chat_tokenizer, kind, grad_type):
    patterns = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.*"]
    data = write_chat_data(tmp_path / "d.jsonl", 6, seed=3)
    store = gradstore.open(tmp_path / "store")
    kw = dict(model=str(llama_dir), data=str(data), params=patterns, projection=kind,
              proj_dim=24, grad_type=grad_type, device="cpu", progress=False,
              vector_dtype="float32")
    store.ingest("b1", batch_size=1, **kw)
    store.ingest("b4", batch_size=4, **kw)
    assert store.meta("b4").checkpoint_names == ["base"]
    assert "params: 2 tensors sha256:" in store.meta("b4").projection.layout
    shapes = [(32, 32), (32, 64)]  # q_proj (out, in), down_proj (hidden, intermediate)
    projector = make_projector(kind, 32 * 32 + 32 * 64, 24, seed=0, module_shapes=shapes)
    ref = reference_rows(llama_dir, data, chat_tokenizer, patterns, projector, grad_type)
    one, four = dict(zip(*store.vectors("b1"), strict=True)), \
        dict(zip(*store.vectors("b4"), strict=True))
    assert sorted(one) == sorted(four) == sorted(ref)
    for i in ref:
        want = ref[i].numpy()
        np.testing.assert_allclose(one[i], four[i], rtol=1e-4, atol=1e-5 * np.abs(want).max())
        np.testing.assert_allclose(four[i], want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_pool_and_target_over_other_parameters_are_refused(tmp_path, llama_dir):
    pool = write_chat_data(tmp_path / "pool.jsonl", 8, seed=1)
    target = write_chat_data(tmp_path / "target.jsonl", 3, seed=2)
    store = gradstore.open(tmp_path / "store")
    kw = dict(model=str(llama_dir), proj_dim=16, device="cpu", progress=False)
    layer0, layer1 = "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"
    store.ingest("pool", data=str(pool), params=layer0, **kw)  # one pattern, as a string
    assert store.meta("pool").ingest["settings"]["params"] == [layer0]
    # the same parameter written another way: the same table space, selection runs
    store.ingest("same", data=str(target), kind="target", params=["model.layers.0.*.down_*"],
                 **kw)
    assert len(store.select("pool", target="same", budget=2).ids) >= 1
    # same shape, same size, same projection: only the parameter set differs
    store.ingest("other", data=str(target), kind="target", params=[layer1], **kw)
    with pytest.raises(GradstoreError, match="differ in projection"):
        store.select("pool", target="other", budget=2)
    store.ingest("lora", data=str(target), kind="target", **kw)  # LoRA gradients
    with pytest.raises(GradstoreError, match="differ in"):
        store.select("pool", target="lora", budget=2)
    with pytest.raises(TableConflict, match="params"):  # a rerun over other parameters
        store.ingest("pool", data=str(pool), params=[layer1], **kw)


@pytest.mark.parametrize(
    "more, match",
    [
        (["--params", "model.layers.*.nothing"], "--params 'model.layers.*.nothing' matches no"),
        (["--params", "*.down_proj.weight", "--grad-type", "adam"], "does not read"),
        (["--params", "*.down_proj.weight", "--checkpoint", "."], "does not combine"),
    ],
)
def test_cli_params_errors_exit_2(tmp_path, llama_dir, more, match):
    data = write_chat_data(tmp_path / "d.jsonl", 2)
    res = run("ingest", tmp_path / "s", "t", "--model", llama_dir, "--data", data,
              "--proj-dim", "16", "--device", "cpu", "--quiet", *more, ok=False)
    assert res.returncode == 2, res.stderr
    assert match in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_info_names_the_parameter_set(tmp_path, llama_dir):
    data = write_chat_data(tmp_path / "d.jsonl", 2)
    run("ingest", tmp_path / "s", "t", "--model", llama_dir, "--data", data, "--proj-dim",
        "16", "--device", "cpu", "--quiet", "--params", "*.down_proj.weight")
    out = run("info", tmp_path / "s").stdout
    line = next(x for x in out.splitlines() if x.startswith("t:"))
    # two layers' down_proj weights: the count and the hash of the set (16 hex digits)
    assert re.search(r"projection rademacher \(seed \d+; params: 2 tensors sha256:[0-9a-f]{16}\)",
                     line), line
