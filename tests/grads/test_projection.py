import math
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

from gradstore.errors import GradstoreError
from gradstore.grads.projection import (
    BLOCK_ROWS,
    COUNTSKETCH_TAG,
    PROJECTION_KINDS,
    RADEMACHER_TAG,
    CountSketchProjector,
    IdentityProjector,
    RademacherProjector,
    make_projector,
    projector_from_spec,
)
from gradstore.store.meta import ProjectionSpec

RANDOM_KINDS = [("rademacher", None), ("countsketch", 1), ("countsketch", 3)]


def block_stream(seed: int, block: int, tag: int, count: int) -> list[int]:
    words = np.random.PCG64(np.random.SeedSequence([seed, block, tag])).random_raw(count)
    return [int(w) for w in words]


def reference_rademacher(seed: int, input_dim: int, dim: int) -> np.ndarray:
    """The documented rule, written out: bit (j % 64) of word (j // 64) * BLOCK_ROWS + r."""
    words_per_row = -(-dim // 64)
    matrix = np.empty((input_dim, dim))
    for block in range(-(-input_dim // BLOCK_ROWS)):
        stream = block_stream(seed, block, RADEMACHER_TAG, words_per_row * BLOCK_ROWS)
        for i in range(block * BLOCK_ROWS, min((block + 1) * BLOCK_ROWS, input_dim)):
            r = i - block * BLOCK_ROWS
            for j in range(dim):
                word = stream[(j // 64) * BLOCK_ROWS + r]
                matrix[i, j] = -1.0 if (word >> (j % 64)) & 1 else 1.0
    return matrix / math.sqrt(dim)


def reference_countsketch(seed: int, input_dim: int, dim: int, nnz: int) -> np.ndarray:
    matrix = np.zeros((input_dim, dim))
    for block in range(-(-input_dim // BLOCK_ROWS)):
        rows = min(BLOCK_ROWS, input_dim - block * BLOCK_ROWS)
        stream = block_stream(seed, block, COUNTSKETCH_TAG, rows * nnz)
        for r in range(rows):
            for s in range(nnz):
                word = stream[r * nnz + s]
                lo, hi = s * dim // nnz, (s + 1) * dim // nnz
                column = lo + (((word >> 32) * (hi - lo)) >> 32)
                matrix[block * BLOCK_ROWS + r, column] = -1.0 if word & 1 else 1.0
    return matrix / math.sqrt(nnz)


def unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True)).float()


@pytest.mark.parametrize("kind,nnz", RANDOM_KINDS)
def test_same_spec_same_matrix_any_batching(kind, nnz):
    input_dim, dim = 2500, 300  # several blocks, neither a multiple of the block size nor of 64
    first = make_projector(kind, input_dim, dim, seed=3, nnz=nnz)
    second = make_projector(kind, input_dim, dim, seed=3, nnz=nnz)
    assert torch.equal(first.matrix_rows(0, input_dim), second.matrix_rows(0, input_dim))

    grads = torch.randn(20, input_dim, generator=torch.Generator().manual_seed(0))
    whole = first.project(grads)
    assert whole.shape == (20, dim) and whole.dtype == torch.float32
    for batch in (1, 7):
        parts = torch.cat([second.project(grads[i : i + batch]) for i in range(0, 20, batch)])
        np.testing.assert_allclose(parts.numpy(), whole.numpy(), rtol=1e-5, atol=1e-5)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    shuffled = second.project(grads[order]).numpy()
    np.testing.assert_allclose(shuffled, whole[order].numpy(), rtol=1e-5, atol=1e-5)

    other = make_projector(kind, input_dim, dim, seed=4, nnz=nnz).matrix_rows(0, input_dim)
    differing = (other != first.matrix_rows(0, input_dim)).any(dim=1).float().mean()
    assert differing > 0.5


@pytest.mark.parametrize("seed,input_dim,dim", [(0, 3000, 100), (7, 1500, 64)])
def test_rademacher_matches_reference(seed, input_dim, dim):
    projector = make_projector("rademacher", input_dim, dim, seed=seed)
    matrix = reference_rademacher(seed, input_dim, dim)
    np.testing.assert_allclose(projector.matrix_rows(0, input_dim).numpy(), matrix, rtol=1e-6)
    grads = np.random.default_rng(seed).standard_normal((5, input_dim))
    out = projector.project(torch.from_numpy(grads))
    np.testing.assert_allclose(out.numpy(), grads @ matrix, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nnz", [1, 3])
def test_countsketch_matches_reference(nnz):
    input_dim, dim = 3000, 100
    projector = make_projector("countsketch", input_dim, dim, seed=5, nnz=nnz)
    matrix = reference_countsketch(5, input_dim, dim, nnz)
    assert ((matrix != 0).sum(axis=1) == nnz).all()  # distinct buckets per coordinate
    np.testing.assert_allclose(projector.matrix_rows(0, input_dim).numpy(), matrix, rtol=1e-6)
    grads = np.random.default_rng(1).standard_normal((5, input_dim))
    out = projector.project(torch.from_numpy(grads))
    np.testing.assert_allclose(out.numpy(), grads @ matrix, rtol=1e-4, atol=1e-4)


def test_rademacher_entries_depend_on_coordinates_only():
    small = make_projector("rademacher", 1500, 100, seed=2).matrix_rows(0, 1500)
    large = make_projector("rademacher", 3000, 200, seed=2).matrix_rows(0, 1500)
    assert torch.equal(torch.sign(small), torch.sign(large[:, :100]))
    projector = make_projector("rademacher", 3000, 100, seed=2)
    full = projector.matrix_rows(0, 3000)
    assert torch.equal(projector.matrix_rows(1000, 2100), full[1000:2100])


def test_golden_entries_seed_0():
    rademacher = make_projector("rademacher", 3000, 100, seed=0)
    expected = {
        (0, 0, 12): [1, 1, 1, 1, -1, 1, -1, 1, 1, 1, -1, 1],
        (1023, 60, 70): [1, 1, 1, -1, 1, -1, -1, 1, 1, 1],
        (2999, 90, 100): [-1, -1, -1, 1, 1, -1, 1, 1, 1, 1],
    }
    for (row, start, stop), signs in expected.items():
        got = rademacher.matrix_rows(row, row + 1)[0, start:stop]
        assert torch.equal(got, torch.tensor(signs, dtype=torch.float32) * np.float32(0.1))

    sketch = make_projector("countsketch", 3000, 100, seed=0, nnz=2).matrix_rows(0, 6)
    columns = [[31, 71], [35, 94], [33, 60], [32, 75], [24, 85], [39, 77]]
    signs = [[1, 1], [-1, 1], [1, -1], [1, -1], [-1, 1], [-1, -1]]
    for row in range(6):
        nonzero = sketch[row].nonzero().flatten().tolist()
        assert nonzero == columns[row]
        expected_values = torch.tensor(signs[row], dtype=torch.float32) / np.float32(math.sqrt(2))
        assert torch.allclose(sketch[row, nonzero], expected_values)


@pytest.mark.parametrize("kind,nnz", RANDOM_KINDS + [("none", None)])
def test_inner_products_within_jl_bound(kind, nnz):
    input_dim, dim, count = 20000, 2048, 30
    x = unit_vectors(count, input_dim, seed=11)
    y = make_projector(kind, input_dim, dim, seed=1, nnz=nnz).project(x)
    exact = (x.double() @ x.double().T).numpy()
    projected = (y.double() @ y.double().T).numpy()
    error = np.abs(projected - exact)
    if kind == "none":
        assert error.max() < 1e-5
    else:
        assert error.max() <= 5 * math.sqrt(2 / dim)
        assert error.max() > 1e-4  # it really is a projection


@pytest.mark.parametrize("kind,nnz", RANDOM_KINDS)
def test_squared_norms_preserved_on_average(kind, nnz):
    input_dim, dim = 5000, 256
    rng = np.random.default_rng(2)
    grads = rng.standard_t(3, (200, input_dim)) * rng.uniform(0.1, 10, (200, 1))
    grads = torch.from_numpy(grads).float()
    projected = make_projector(kind, input_dim, dim, seed=9, nnz=nnz).project(grads)
    ratio = projected.double().pow(2).sum(1) / grads.double().pow(2).sum(1)
    assert abs(ratio.mean().item() - 1) < 0.03


def test_identity_returns_input():
    projector = make_projector("none", 50, dim=8, seed=3)
    assert projector.spec == ProjectionSpec("none", None, 50, 50, None)
    grads = torch.randn(4, 50)
    assert projector.project(grads) is grads
    as_double = projector.project(grads.double())
    assert as_double.dtype == torch.float32 and torch.equal(as_double, grads)
    assert torch.equal(projector.matrix_rows(3, 6), torch.eye(50)[3:6])


@pytest.mark.parametrize("kind,nnz", RANDOM_KINDS + [("none", None)])
def test_spec_round_trip(kind, nnz):
    projector = make_projector(kind, 2100, 96, seed=12, nnz=nnz)
    stored = ProjectionSpec(**asdict(projector.spec))  # as a table's metadata would hold it
    rebuilt = projector_from_spec(stored)
    assert type(rebuilt) is type(projector) and rebuilt.spec == projector.spec
    grads = torch.randn(3, 2100)
    assert torch.equal(rebuilt.project(grads), projector.project(grads))


def test_make_projector_types_and_specs():
    assert PROJECTION_KINDS == ("rademacher", "countsketch", "factored", "none")
    assert isinstance(make_projector("rademacher", 10), RademacherProjector)
    sketch = make_projector("countsketch", 10, 4)
    assert isinstance(sketch, CountSketchProjector)
    assert sketch.spec == ProjectionSpec("countsketch", 0, 4, 10, 1)
    assert isinstance(make_projector("none", 10), IdentityProjector)
    assert make_projector("rademacher", 10).spec == ProjectionSpec("rademacher", 0, 8192, 10)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(kind="gaussian", input_dim=10), "'gaussian'; use one of rademacher, countsketch"),
        (dict(kind="rademacher", input_dim=10, dim=0), "dim must be an integer >= 1, got 0"),
        (dict(kind="countsketch", input_dim=10, dim=-3), "got -3"),
        (dict(kind="rademacher", input_dim=10, dim=None), "needs an output dim"),
        (dict(kind="rademacher", input_dim=0), "input_dim must be an integer >= 1, got 0"),
        (dict(kind="countsketch", input_dim=10, dim=8, nnz=0), "nnz must be an integer >= 1"),
        (dict(kind="countsketch", input_dim=10, dim=8, nnz=9), "nnz=9 exceeds dim=8"),
        (dict(kind="rademacher", input_dim=10, nnz=2), "nnz=2 applies only to countsketch"),
        (dict(kind="rademacher", input_dim=10, seed=-1), "seed must be an integer >= 0, got -1"),
        (dict(kind="countsketch", input_dim=10, seed=1.5), "got 1.5"),
        (dict(kind="rademacher", input_dim=10, seed="0"), "got '0'"),
        (dict(kind="rademacher", input_dim=10, seed=True), "got True"),
    ],
)
def test_bad_arguments_raise(kwargs, fragment):
    with pytest.raises(GradstoreError, match=re.escape(fragment)):
        make_projector(**kwargs)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_bad_grads_raise(kind):
    projector = make_projector(kind, 10, 4, module_shapes=[(2, 5)])
    with pytest.raises(GradstoreError, match="11 columns .* expects input_dim=10"):
        projector.project(torch.zeros(2, 11))
    with pytest.raises(GradstoreError, match=re.escape("got shape (10,)")):
        projector.project(torch.zeros(10))
    with pytest.raises(GradstoreError, match=re.escape("got shape (2, 5, 2)")):
        projector.project(torch.zeros(2, 5, 2))
    with pytest.raises(GradstoreError, match="torch.int64"):
        projector.project(torch.zeros(2, 10, dtype=torch.int64))
    with pytest.raises(GradstoreError, match="ndarray"):
        projector.project(np.zeros((2, 10)))
    with pytest.raises(GradstoreError, match=re.escape("rows [5, 11)")):
        projector.matrix_rows(5, 11)


@pytest.mark.parametrize(
    "spec,fragment",
    [
        (ProjectionSpec("rademacher", None, 16, 10), "no seed"),
        (ProjectionSpec("countsketch", 1, 16, None, 1), "no input_dim"),
        (ProjectionSpec(), "no input_dim"),
        (ProjectionSpec("unknown", 0, 16, 10), "'unknown'; use one of"),
    ],
)
def test_bad_specs_raise(spec, fragment):
    with pytest.raises(GradstoreError, match=re.escape(fragment)):
        projector_from_spec(spec)
