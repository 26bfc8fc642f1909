"""The factored projection against its documented rule, written out here, and against
per-example gradients from plain autograd, one example at a time."""

from __future__ import annotations

import math
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

import gradstore
from gradstore.errors import GradstoreError
from gradstore.grads.factored_projection import FactoredProjector, factored_layout
from gradstore.grads.per_example import PerExampleGradients, collate
from gradstore.grads.projection import make_projector, projector_from_spec
from gradstore.grads.projection_common import FACTORED_LEFT_TAG, FACTORED_RIGHT_TAG
from gradstore.store.meta import ProjectionSpec
from tests.cli.test_cli import run
from tests.grads.models import load
from tests.grads.test_ingest import (
    reference_vectors,
    stored,
    train_checkpoints,
    write_chat_data,
)
from tests.grads.test_per_example import (
    LLAMA_TARGETS,
    autograd_one,
    peft_model,
    random_examples,
)


def reference_signs(seed: int, module: int, tag: int, rows: int, cols: int) -> np.ndarray:
    """The documented rule: entry (i, c) is -1 iff bit c % 64 of word i * w + c // 64 is set."""
    w = -(-cols // 64)
    stream = np.random.PCG64(np.random.SeedSequence([seed, module, tag])).random_raw(rows * w)
    words = [int(x) for x in stream]
    out = np.empty((rows, cols))
    for i in range(rows):
        for c in range(cols):
            out[i, c] = -1.0 if (words[i * w + c // 64] >> (c % 64)) & 1 else 1.0
    return out


def reference_matrices(seed: int, blocks) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each module's (left / sqrt(k), right), float64, from the documented rule."""
    return [
        (reference_signs(seed, m, FACTORED_LEFT_TAG, b.left, b.rows) / math.sqrt(b.dim),
         reference_signs(seed, m, FACTORED_RIGHT_TAG, b.right, b.cols))
        for m, b in enumerate(blocks)
    ]


def explicit_projection(grad: np.ndarray, blocks, matrices) -> np.ndarray:
    """``L G R^T`` per module of one flat gradient, its first k entries, concatenated."""
    parts = []
    for b, (left, right) in zip(blocks, matrices, strict=True):
        g = grad[b.input_offset : b.input_offset + b.rows * b.cols].reshape(b.rows, b.cols)
        parts.append((left @ g @ right.T).reshape(-1)[: b.dim])
    return np.concatenate(parts)


def reference_matrix(seed: int, blocks) -> np.ndarray:
    """The whole (P, dim) matrix: row-major vec(L G R^T) = kron(L, R) vec(G)."""
    P, dim = sum(b.rows * b.cols for b in blocks), sum(b.dim for b in blocks)
    out = np.zeros((P, dim))
    for b, (left, right) in zip(blocks, reference_matrices(seed, blocks), strict=True):
        out[b.input_offset : b.input_offset + b.rows * b.cols, b.offset : b.offset + b.dim] = (
            np.kron(left, right)[: b.dim].T
        )
    return out


def test_layout_shares_and_blocks_by_hand():
    # 50 dims over 4 modules: 12 each and one more for the first two by position
    blocks = factored_layout([(4, 32), (32, 4), (4, 32), (16, 4)], 50)
    assert [(b.left, b.right, b.dim) for b in blocks] == [
        (3, 5, 13), (4, 4, 13), (3, 4, 12), (3, 4, 12)]
    assert [b.offset for b in blocks] == [0, 13, 26, 38]
    assert [b.input_offset for b in blocks] == [0, 128, 256, 384]
    # modules smaller than an even share keep all their entries, the rest get what is left;
    # a 1-D parameter is a column
    blocks = factored_layout([(2, 1), (4, 32), (1, 3)], 20)
    assert [(b.rows, b.cols, b.left, b.right, b.dim) for b in blocks] == [
        (2, 1, 2, 1, 2), (4, 32, 3, 5, 15), (1, 3, 1, 3, 3)]
    assert factored_layout([(3,)], 2)[0].rows == 3


@pytest.mark.parametrize(
    "shapes,dim,fragment",
    [
        ([(4, 8), (8, 4)], 1, "2 <= dim <= 64"),
        ([(4, 8), (8, 4)], 65, "needs 2 <= dim <= 64"),
        ([], 4, "at least one module"),
        ([(4, 0)], 1, "module shape entry must be an integer >= 1, got 0"),
    ],
)
def test_bad_layouts_raise(shapes, dim, fragment):
    with pytest.raises(GradstoreError, match=re.escape(fragment)):
        FactoredProjector(shapes, dim, seed=0)


def test_matrices_match_rule_and_golden_entries_seed_0():
    shapes = [(4, 100), (100, 4), (3,)]
    projector = FactoredProjector(shapes, 60, seed=0)
    reference = reference_matrices(0, projector.blocks)
    for m in range(len(shapes)):
        left, right = projector.module_matrices(m)
        np.testing.assert_allclose(left.numpy(), reference[m][0], rtol=1e-6)
        np.testing.assert_array_equal(right.numpy(), reference[m][1])
    # literal values: a change of numpy's SeedSequence/PCG64 or of the rule shows here
    assert [(b.left, b.right, b.dim) for b in projector.blocks] == [
        (4, 8, 29), (7, 4, 28), (3, 1, 3)]
    left0, right0 = projector.module_matrices(0)
    assert (left0[0] * math.sqrt(29)).tolist() == pytest.approx([1, -1, 1, 1])
    assert right0[2, 60:70].tolist() == [-1, 1, -1, 1, -1, 1, -1, -1, -1, 1]
    left1, right1 = projector.module_matrices(1)
    assert (left1[4, :8] * math.sqrt(28)).tolist() == pytest.approx([-1, 1, 1, -1, 1, 1, 1, 1])
    assert right1[0].tolist() == [-1, -1, -1, 1]
    # whole matrix: the kron rule; and larger blocks extend smaller ones by rows
    full = projector.matrix_rows(0, projector.spec.input_dim).numpy()
    np.testing.assert_allclose(full, reference_matrix(0, projector.blocks), rtol=1e-6)
    wider = FactoredProjector(shapes, 120, seed=0).module_matrices(0)[1]
    assert wider.shape[0] > 8 and torch.equal(wider[:8], right0)


def test_formed_gradients_projected_by_the_rule_any_batching():
    shapes = [(8, 70), (70, 8), (5,)]
    projector = FactoredProjector(shapes, 96, seed=3)
    P = projector.spec.input_dim
    grads = torch.randn(9, P, generator=torch.Generator().manual_seed(0))
    got = projector.project(grads)
    matrix = reference_matrix(3, projector.blocks)
    np.testing.assert_allclose(got.numpy(), grads.double().numpy() @ matrix, rtol=1e-4,
                               atol=1e-5)
    parts = torch.cat([projector.project(grads[i : i + 2]) for i in range(0, 9, 2)])
    # float32 products of another batch shape may sum in another order: compare each
    # row by its norm (1e-5 of it), not element by element near zero
    for i in range(9):
        assert torch.linalg.norm(parts[i] - got[i]) <= 1e-5 * torch.linalg.norm(got[i]), i
    other = FactoredProjector(shapes, 96, seed=4).project(grads)
    assert not torch.allclose(other, got)


def test_squared_norms_preserved_on_average():
    projector = FactoredProjector([(8, 300), (300, 8), (16, 40)], 192, seed=9)
    rng = np.random.default_rng(2)
    grads = rng.standard_t(3, (400, projector.spec.input_dim)) * rng.uniform(0.1, 10, (400, 1))
    grads = torch.from_numpy(grads).float()
    ratio = projector.project(grads).double().pow(2).sum(1) / grads.double().pow(2).sum(1)
    assert abs(ratio.mean().item() - 1) < 0.05


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tokens_projection_equals_explicit_projection_of_autograd(arch, llama_dir, gpt2_dir):
    """Projected in the hooks, never formed, against ``L G R^T`` of each example's own
    autograd gradient (float64) with matrices from the documented rule."""
    path, targets = (llama_dir, LLAMA_TARGETS) if arch == "llama" else (gpt2_dir, ["c_attn"])
    model = peft_model(path, targets)
    pe = PerExampleGradients(model, strategy="hooks")
    projector = make_projector("factored", pe.num_params, 100, seed=5, module_shapes=pe.shapes)
    seqs, masks = random_examples(np.random.default_rng(1), 6)
    batch = collate(seqs, masks, pad_id=0)
    assert int(batch.attention_mask.sum()) < batch.input_ids.numel()  # padding present
    got, losses = pe.projected(batch, projector)
    assert got.shape == (6, 100)
    matrices = reference_matrices(5, projector.blocks)
    for b in range(6):
        grad, loss = autograd_one(model, seqs[b], masks[b])
        want = explicit_projection(grad.double().numpy(), projector.blocks, matrices)
        # float32 sums over <= 24 tokens and <= 96 features (seen: <= 5e-7 of the norm);
        # 1e-5 allows for the summation order, far below a wrong sign or token (~1e-1)
        assert np.linalg.norm(got[b].numpy() - want) <= 1e-5 * np.linalg.norm(want), b
        assert abs(float(losses[b]) - loss) < 1e-5 * max(1.0, abs(loss))


def test_padded_tokens_add_nothing(llama_dir):
    """An example padded to a long batch projects as it does alone."""
    model = peft_model(llama_dir, LLAMA_TARGETS)
    pe = PerExampleGradients(model, strategy="hooks")
    projector = make_projector("factored", pe.num_params, 64, seed=1, module_shapes=pe.shapes)
    seqs, masks = random_examples(np.random.default_rng(4), 2, lo=5, hi=8)
    long_seq, long_mask = random_examples(np.random.default_rng(5), 1, lo=40, hi=41)
    padded, _ = pe.projected(collate(seqs + long_seq, masks + long_mask, 0), projector)
    for b in range(2):
        alone, _ = pe.projected(collate(seqs[b : b + 1], masks[b : b + 1], 0), projector)
        # the model runs float32 over 41 positions here and 8 alone: another summation
        # order (seen on another CPU: 2.5e-5 of one element, ~1e-5 of the norm). A padded
        # token that added its gradient would move the vector by a sizeable fraction
        # of its norm, so 1e-4 of the norm separates the two
        diff = np.linalg.norm(padded[b].numpy() - alone[0].numpy())
        assert diff <= 1e-4 * np.linalg.norm(alone[0].numpy()), (b, diff)


def test_project_tokens_leaves_out_masked_tokens():
    """Nonzero gradients and inputs at masked tokens: the block is that of the others."""
    projector = FactoredProjector([(6, 20)], 15, seed=2)
    gen = torch.Generator().manual_seed(3)
    grad_out, inputs = torch.randn(3, 7, 6, generator=gen), torch.randn(3, 7, 20, generator=gen)
    mask = torch.ones(3, 7, dtype=torch.int64)
    mask[0, 4:], mask[2, 1:] = 0, 0
    got = projector.project_tokens(0, grad_out, inputs, mask)
    (left, right), = reference_matrices(2, projector.blocks)
    for b in range(3):
        kept = mask[b].bool()
        g = (grad_out[b, kept].double().T @ inputs[b, kept].double()).numpy()
        want = (left @ g @ right.T).reshape(-1)[:15]
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-5, atol=1e-5)


def test_hooks_refuse_a_projector_of_other_modules(llama_dir):
    pe = PerExampleGradients(peft_model(llama_dir, LLAMA_TARGETS), strategy="hooks")
    other = FactoredProjector(pe.shapes[::-1], 64, seed=0)
    seqs, masks = random_examples(np.random.default_rng(0), 1)
    with pytest.raises(GradstoreError, match="other modules than this model's 16"):
        pe.projected(collate(seqs, masks, 0), other)


def test_spec_round_trip_and_layout_checked():
    shapes = [(4, 32), (32, 4)]
    projector = make_projector("factored", 256, 40, seed=12, module_shapes=shapes)
    assert projector.spec.kind == "factored" and projector.spec.dim == 40
    assert projector.spec.layout.startswith("2 modules sha256:")
    stored_spec = ProjectionSpec(**asdict(projector.spec))  # as a table's metadata holds it
    rebuilt = projector_from_spec(stored_spec, module_shapes=shapes)
    grads = torch.randn(3, 256)
    assert torch.equal(rebuilt.project(grads), projector.project(grads))
    with pytest.raises(GradstoreError, match="not reproduced by these modules"):
        projector_from_spec(stored_spec, module_shapes=[(8, 16), (16, 8)])
    with pytest.raises(GradstoreError, match="needs the shapes"):
        projector_from_spec(stored_spec)
    with pytest.raises(GradstoreError, match="add up to 256 gradient entries, not input_dim=10"):
        make_projector("factored", 10, 40, module_shapes=shapes)
    with pytest.raises(GradstoreError, match="nnz=2 applies only to countsketch"):
        make_projector("factored", 256, 40, nnz=2, module_shapes=shapes)


INGEST = dict(device="cpu", progress=False, vector_dtype="float32")


@pytest.fixture(scope="module")
def checkpoints(llama_dir, tmp_path_factory):
    return train_checkpoints(llama_dir, tmp_path_factory.mktemp("warmup"))


def checkpoint_shapes(model_dir, ckpt) -> list[tuple[int, ...]]:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load(model_dir), ckpt, is_trainable=True)
    return [tuple(p.shape) for _, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("grad_type", ["sgd", "adam"])  # in the hooks / of formed gradients
def test_ingested_vectors_equal_autograd_then_rule(tmp_path, llama_dir, checkpoints,
                                                   chat_tokenizer, grad_type):
    """`store.ingest(projection="factored")`: stored vectors against each example's
    autograd gradient (Adam's step from it) times the rule's (P, dim) matrix."""
    data = write_chat_data(tmp_path / "d.jsonl", 7, seed=4)
    store = gradstore.open(tmp_path / "store")
    store.ingest("pool", model=str(llama_dir), data=str(data), checkpoints=checkpoints[1:],
                 projection="factored", proj_dim=90, batch_size=3, grad_type=grad_type,
                 **INGEST)
    meta = store.meta("pool")
    assert meta.projection.kind == "factored" and meta.dim == 90
    blocks = factored_layout(checkpoint_shapes(llama_dir, checkpoints[1]), 90)
    matrix = torch.from_numpy(reference_matrix(0, blocks)).float()
    want, _ = reference_vectors(llama_dir, checkpoints[1], data, chat_tokenizer, grad_type,
                                matrix)
    got = stored(store, "pool", "checkpoint-2")
    assert set(got) == set(want)
    for i in want:
        # float32 throughout (seen: <= 6e-7 of the norm); a wrong matrix entry, token or
        # example order is off by ~1e-1
        assert np.linalg.norm(got[i] - want[i]) <= 1e-5 * np.linalg.norm(want[i]), i


def test_batch_size_does_not_change_vectors(tmp_path, llama_dir, checkpoints):
    data = write_chat_data(tmp_path / "d.jsonl", 9, seed=6)  # lengths differ: padding
    store = gradstore.open(tmp_path / "store")
    for table, bs in (("one", 1), ("four", 4)):
        store.ingest(table, model=str(llama_dir), data=str(data), checkpoints=checkpoints,
                     projection="factored", proj_dim=48, batch_size=bs, grad_type="sgd",
                     **INGEST)
    assert store.meta("one").projection == store.meta("four").projection
    for ckpt in ("checkpoint-1", "checkpoint-2"):
        one, four = stored(store, "one", ckpt), stored(store, "four", ckpt)
        assert set(one) == set(four) and len(one) == 9
        for i in one:
            # only the summation order differs (seen: <= 6e-7 of the norm)
            assert np.linalg.norm(one[i] - four[i]) <= 1e-5 * np.linalg.norm(one[i]), i


def test_cli_refuses_targets_projected_otherwise(tmp_path, llama_dir):
    """`gradstore ingest --projection factored`, then select against targets ingested with
    another kind, or the same kind over other modules of the same size: one error line."""
    data = write_chat_data(tmp_path / "d.jsonl", 6, seed=7)
    store = str(tmp_path / "s")
    common = ["--model", llama_dir, "--data", data, "--proj-dim", "40", "--device", "cpu",
              "--quiet", "--lora-r", "2", "--lora-alpha", "4"]
    run("ingest", store, "pool", "--projection", "factored", *common)
    run("ingest", store, "dense", "--kind", "target", "--projection", "rademacher", *common)
    # r=4 on q,v has as many entries as r=2 on q,k,v,o (448 a layer), in other shapes
    other = [*common[:-4], "--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "q_proj,v_proj"]
    run("ingest", store, "qv", "--kind", "target", "--projection", "factored", *other)
    pool, qv = gradstore.open(store).meta("pool"), gradstore.open(store).meta("qv")
    assert pool.projection.input_dim == qv.projection.input_dim
    assert pool.projection.layout != qv.projection.layout
    for target in ("dense", "qv"):
        res = run("select", store, "--pool", "pool", "--target", target, "--budget", "2", ok=False)
        assert res.returncode == 2
        assert "'pool' and target " in res.stderr and "differ in projection" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
