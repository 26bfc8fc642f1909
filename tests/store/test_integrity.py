"""A store that cannot silently lie: checksums, damage injected into real Lance files, repair,
restore, and the exit status a user sees (2 with one line, never a wrong answer with 0)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import lance
import numpy as np
import pytest

import gradstore
from gradstore.store.database import RowBlock
from gradstore.store.integrity import (
    NORM_WEIGHT,
    DamagedTable,
    bad_rows,
    checksum_weights,
    row_checksums,
    text_checksums,
)
from tests.cli.test_cli import run

N, D, FRAG = 400, 32, 100


# The weights of the first four 8-byte words, written down when the format was fixed: every
# stored checksum depends on them, so no dependency (e.g. NumPy's random stream) may change
# them. A row of 13 float16 values uses all four (26 bytes, the last word padded).
WEIGHTS = [1822514234829198559, 3608575061444627717, 6004714471245057875, 8092085189913807725]
ROW = (np.arange(13, dtype=np.float16) / 4).reshape(1, -1)
ROW_CHECKSUM = 8944452396039538176
ROW_NORM_CHECKSUM = -9018139151709611218  # with its float32 norm, 6.3737745
W_1023, W_8191 = 8918657046171299243, 6473648965709315817  # weights 1024 and 8192


def checksum_by_hand(row: np.ndarray) -> int:
    """The documented formula with Python integers: sum of 8-byte words times odd weights,
    modulo 2^64, read as a signed 64-bit number."""
    raw = row.tobytes()
    raw += b"\0" * (-len(raw) % 8)
    words = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
    total = sum(a * b for a, b in zip(words, WEIGHTS, strict=True)) % 2**64
    return total - 2**64 if total >= 2**63 else total


def test_checksums_are_the_literal_values_stores_hold():
    """Stores on disk hold checksums made with these weights: they must never move."""
    assert all(w % 2 == 1 for w in WEIGHTS)
    assert int(row_checksums(ROW)[0]) == ROW_CHECKSUM == checksum_by_hand(ROW[0])
    norm = np.linalg.norm(ROW.astype(np.float32), axis=1).astype(np.float32)
    assert int(row_checksums(ROW, norm)[0]) == ROW_NORM_CHECKSUM


def test_checksum_weights_do_not_come_from_numpys_random_stream(monkeypatch):
    """A NumPy release may change what default_rng draws: the weights must not move (issue:
    with the stream changed, verify called every intact table damaged)."""
    import gradstore.store.integrity as integrity

    def changed_stream(*args, **kwargs):
        return np.random.Generator(np.random.PCG64(12345))

    monkeypatch.setattr(np.random, "default_rng", changed_stream)
    monkeypatch.setattr(integrity, "_weights_cache", {})
    w = checksum_weights(8192)
    assert w[:4].tolist() == WEIGHTS
    assert int(w[1023]) == W_1023 and int(w[8191]) == W_8191  # 8 KB rows and beyond
    assert int(row_checksums(ROW)[0]) == ROW_CHECKSUM


def test_checksum_matches_the_formula_and_sees_every_byte(rng):
    rows = rng.standard_normal((6, 13)).astype(np.float16)  # 26 bytes: a partial last word
    sums = row_checksums(rows)
    assert [int(s) for s in sums] == [checksum_by_hand(r) for r in rows]
    raw = bytearray(rows[2].tobytes())
    for i in range(len(raw)):
        changed = bytearray(raw)
        changed[i] ^= 0x01
        bad = np.frombuffer(bytes(changed), dtype=np.float16).reshape(1, -1).copy()
        assert bad_rows(bad, sums[2:3]).tolist() == [0], f"byte {i} unseen"
    assert bad_rows(rows, sums).tolist() == []
    nan = rows.copy()
    nan[4, 0] = np.nan
    assert bad_rows(nan, None).tolist() == [4]
    # the stored norm is covered too: its float32 bits times one more odd weight
    norms = np.linalg.norm(rows.astype(np.float32), axis=1).astype(np.float32)
    with_norms = row_checksums(rows, norms)
    for r in range(len(rows)):
        bits = int(norms[r].view(np.uint32))
        want = (checksum_by_hand(rows[r]) + bits * int(NORM_WEIGHT)) % 2**64
        assert int(with_norms[r]) == (want - 2**64 if want >= 2**63 else want)
    off = norms.copy()
    off[1] = np.nextafter(off[1], np.float32(np.inf))
    assert bad_rows(rows, with_norms, off).tolist() == [1]
    assert bad_rows(rows, None, off * 1.01).tolist() == list(range(len(rows)))


def test_id_checksums_are_blake2b():
    got = text_checksums(["a", "b"], ["x", None])
    want = [int.from_bytes(hashlib.blake2b(t, digest_size=8).digest(), "little", signed=True)
            for t in (b"a\0x", b"b\0")]
    assert got.tolist() == want


def build(path: Path, rng) -> tuple[gradstore.Store, np.ndarray]:
    """A pool of N rows in N/FRAG fragments (two checkpoints), a target, one selection."""
    store = gradstore.open(path)
    X = rng.standard_normal((N, 2, D)).astype(np.float32)
    ids = [f"p{i}" for i in range(N)]
    store.import_vectors("pool", X[:FRAG, 0], "0", ids=ids[:FRAG], lr=1.0, kind="pool")
    store.import_vectors("pool", X[:FRAG, 1], "1", ids=ids[:FRAG], lr=1.0)
    db = store.database
    for s in range(FRAG, N, FRAG):
        db.append_rows("pool", RowBlock(ids=ids[s:s + FRAG], rows=list(range(s, s + FRAG)),
                                        vectors=[X[s:s + FRAG, 0], X[s:s + FRAG, 1]]))
    T = rng.standard_normal((4, 2, D)).astype(np.float32)
    store.import_vectors("tgt", T[:, 0], "0", lr=1.0, kind="target")
    store.import_vectors("tgt", T[:, 1], "1", lr=1.0, kind="target")
    store.select("pool", "tgt", budget=20)
    return store, X.reshape(N, 2 * D).astype(np.float16).astype(np.float32)


@pytest.fixture
def built(tmp_path, rng):
    store, X = build(tmp_path / "s", rng)
    return tmp_path / "s", X


def data_files(table_dir: Path) -> list[Path]:
    return sorted((table_dir / "data").glob("*.lance"), key=lambda p: p.stat().st_mtime)


def test_the_fixture_store_is_whole(built):
    path, X = built
    assert run("verify", path).stdout.count(": ok") == 3
    ids, got = gradstore.open(path).vectors("pool")
    assert ids == [f"p{i}" for i in range(N)]
    np.testing.assert_array_equal(got, X)
    assert len(lance.dataset(str(path / "pool.lance")).get_fragments()) == N // FRAG


def raw_values(path: Path) -> np.ndarray:
    """The pool's values as Lance returns them, no checks (what a reader without checksums
    would compute with)."""
    tbl = lance.dataset(str(path / "pool.lance")).to_table(columns=["vec_0", "vec_1"])
    return np.concatenate(
        [np.stack(tbl.column(c).to_numpy(zero_copy_only=False)).astype(np.float32)
         for c in ("vec_0", "vec_1")], 1)


@pytest.mark.parametrize(("seed", "memory"), [*[(s, None) for s in range(6)],
                                              *[(s, "1MB") for s in range(6, 9)],
                                              *[(s, "where") for s in range(9, 12)]])
def test_flipped_bytes_are_never_answered(built, seed, memory):
    """Random bytes flipped in a random data file: select refuses (exit 2, one line) and
    verify names exactly the rows whose values changed (or the fragment it cannot read);
    also streamed by row ranges under a small memory budget, and streamed by position
    (a --where that keeps every row: a query's restricted source)."""
    path, X = built
    r = np.random.default_rng(100 + seed)
    files = data_files(path / "pool.lance")
    f = files[r.integers(len(files))]
    raw = bytearray(f.read_bytes())
    start = int(r.integers(0, len(raw) // 2))  # the first half: values, not the footer
    for i in range(start, start + 48):
        raw[i] ^= 0xA5
    f.write_bytes(bytes(raw))
    extra = [] if memory is None else ["--scan-mode", "stream", "--memory-budget", memory]
    if memory == "where":
        extra = ["--scan-mode", "stream", "--where", "id LIKE 'p%'"]
    res = run("select", path, "--pool", "pool", "--target", "tgt", "--budget", "20", *extra,
              ok=False)
    report = gradstore.open(path).verify("pool")[0]
    try:
        changed = np.flatnonzero((raw_values(path) != X).any(1))
    except (OSError, ValueError, RuntimeError):
        changed = None  # Lance itself cannot decode the file
    if res.returncode == 0:  # the bytes held nothing a selection reads: the same answer
        store = gradstore.open(path)
        first, latest = store.selections()[0], store.selection("latest")
        assert latest.ids == first.ids
        assert changed is None or not len(changed)  # (verify may still see `row` damaged)
        return
    assert res.returncode == 2 and "damaged" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert report.status == "damaged"
    if changed is not None and len(changed) and not report.lost_fragments:
        assert set(changed) <= set(report.damaged_rows)


def test_drop_damaged_then_select_never_uses_those_rows(built):
    path, X = built
    f = data_files(path / "pool.lance")[0]
    ds = lance.dataset(str(path / "pool.lance"))
    one = ds.to_table(columns=["vec_0"], limit=1).column("vec_0")[0].values.to_numpy()
    raw = bytearray(f.read_bytes())
    at = bytes(raw).find(one.tobytes())
    assert at >= 0, "the first row's values are stored as they are"
    raw[at + 2] ^= 0x40  # one value of row 0
    f.write_bytes(bytes(raw))
    res = run("verify", path, "pool", ok=False)
    assert res.returncode == 2 and "1 rows fail their checksum" in res.stdout
    run("verify", path, "pool", "--drop-damaged")
    store = gradstore.open(path)
    ids, got = store.vectors("pool")
    assert "p0" not in ids and len(ids) == N - 1
    np.testing.assert_array_equal(got, X[1:])
    sel = store.select("pool", "tgt", budget=N - 1, method="less")
    assert "p0" not in sel.ids


def test_a_changed_id_is_caught(built):
    path, _ = built
    f = data_files(path / "pool.lance")[0]
    raw = f.read_bytes()
    assert raw.count(b"p17") == 1
    f.write_bytes(raw.replace(b"p17", b"p71"))
    with pytest.raises(DamagedTable, match="id/subtask"):
        gradstore.open(path).ids("pool")
    res = run("export", path, "--selection", "latest", "--data", path / "x.jsonl",
              "--out", path / "o.jsonl", ok=False)
    assert res.returncode == 2
    assert gradstore.open(path).verify("pool")[0].damaged_rows == [17]


def test_ids_at_reads_and_checks_only_the_chosen_rows(built):
    """A selection names its rows with ``ids_at``: their ids in the order asked, a damaged
    one among them refused, and damage elsewhere not read."""
    path, _ = built
    db = gradstore.open(path).database
    assert db.ids_at("pool", [5, 2, 5, 0]) == ["p5", "p2", "p5", "p0"]
    assert db.ids_at("pool", []) == []
    f = data_files(path / "pool.lance")[0]
    f.write_bytes(f.read_bytes().replace(b"p17", b"p71"))
    db = gradstore.open(path).database
    assert db.ids_at("pool", [3, 18]) == ["p3", "p18"]
    with pytest.raises(DamagedTable, match=r"id/subtask.*storage rows 17\)"):
        db.ids_at("pool", [3, 17])


def test_truncated_and_missing_files(built):
    path, _ = built
    files = data_files(path / "pool.lance")
    with open(files[-1], "r+b") as fh:
        fh.truncate(1000)
    res = run("info", path, ok=False)
    assert res.returncode == 2 and "pool: DAMAGED" in res.stdout
    assert "tgt: target" in res.stdout, "the other tables are still described"
    assert "the manifest says" in res.stdout
    res = run("select", path, "--pool", "pool", "--target", "tgt", "--budget", "5", ok=False)
    assert res.returncode == 2 and "cannot be read" in res.stderr
    files[-1].unlink()
    report = gradstore.open(path).verify("pool")[0]
    assert len(report.lost_fragments) == 1
    run("verify", path, "pool", "--drop-damaged")
    ids = gradstore.open(path).ids("pool")
    assert len(ids) == N - FRAG and len(set(ids)) == len(ids)
    run("select", path, "--pool", "pool", "--target", "tgt", "--budget", "5")


def test_missing_manifests(built):
    path, _ = built
    shutil.rmtree(path / "pool.lance" / "_versions")
    res = run("info", path, ok=False)
    assert res.returncode == 2 and "pool: DAMAGED" in res.stdout and "tgt: target" in res.stdout
    for args in (["info", path, "pool"],
                 ["select", path, "--pool", "pool", "--target", "tgt", "--budget", "5"],
                 ["restore", path, "pool"]):
        res = run(*args, ok=False)
        assert res.returncode == 2 and "cannot be read" in res.stderr, args
        assert len(res.stderr.strip().splitlines()) == 1


def test_damaged_selection_log_refuses_before_computing(built):
    path, _ = built
    store = gradstore.open(path)
    first = store.selections()[0]
    store.select("pool", "tgt", budget=30)
    log = path / "_selections.lance"
    data_files(log)[-1].unlink()  # the second selection's rows
    for args in (["select", path, "--pool", "pool", "--target", "tgt", "--budget", "5"],
                 ["export", path, "--selection", "latest", "--data", path / "x",
                  "--out", path / "o.jsonl"]):
        res = run(*args, ok=False)
        assert res.returncode == 2 and "_selections" in res.stderr and "restore" in res.stderr
    res = run("info", path, ok=False)
    assert res.returncode == 2 and "selection log DAMAGED" in res.stdout
    listing = run("restore", path, "_selections").stdout
    good = [int(line.split(":")[0]) for line in listing.splitlines()[1:]
            if "files present" in line]
    assert good, listing
    run("restore", path, "_selections", "--version", str(good[0]))
    kept = gradstore.open(path).selections()
    assert [s.selection_id for s in kept] == [first.selection_id]
    assert kept[0].ids == first.ids
    run("select", path, "--pool", "pool", "--target", "tgt", "--budget", "5")
    assert len(gradstore.open(path).selections()) == 2


def test_restore_an_earlier_version_of_a_table(built):
    path, X = built
    store = gradstore.open(path)
    before = store.database.dataset("pool").version
    store.database.append_rows("pool", RowBlock(ids=["extra"], rows=[N],
                                                vectors=[X[:1, :D], X[:1, D:]]))
    assert store.num_rows("pool") == N + 1
    res = run("restore", path, "pool", "--version", str(before))
    assert "pool: ok" in res.stdout
    assert gradstore.open(path).num_rows("pool") == N
    res = run("restore", path, "pool", "--version", "999", ok=False)
    assert res.returncode == 2 and "no version 999" in res.stderr


def test_duplicate_ids_found_and_dropped(built):
    path, X = built
    db = gradstore.open(path).database
    db.append_rows("pool", RowBlock(ids=["p3", "p4"], rows=[3, 4],
                                    vectors=[X[3:5, :D], X[3:5, D:]]))
    res = run("verify", path, "pool", ok=False)
    assert res.returncode == 2 and "2 ids stored more than once" in res.stdout
    run("verify", path, "pool", "--drop-duplicates")
    ids, got = gradstore.open(path).vectors("pool")
    assert sorted(ids) == sorted(f"p{i}" for i in range(N))
    order = np.argsort([int(i[1:]) for i in ids])
    np.testing.assert_array_equal(got[order], X)


def test_older_tables_get_checksums(tmp_path):
    """The fixture store predates checksums: verify says so, --add-checksums adds them, and
    the values are unchanged (then damage is caught in it too)."""
    src = Path(__file__).parent.parent / "fixtures" / "store_v0"
    path = tmp_path / "old"
    shutil.copytree(src, path)
    before = gradstore.open(path).vectors("pool")[1]
    res = run("verify", path, "pool")
    assert "no checksums" in res.stdout
    run("verify", path, "pool", "--add-checksums")
    assert "pool: ok" in run("verify", path, "pool").stdout
    np.testing.assert_array_equal(gradstore.open(path).vectors("pool")[1], before)


def test_a_changed_row_index_is_caught(built, tmp_path):
    """``row`` maps the vectors of a checkpoint added later onto examples: a changed value
    would give an example another's vectors. It is checksummed with the id."""
    path, _ = built
    db = gradstore.open(path).database
    db.dataset("pool").update({"row": "row + 1"}, where="id = 'p7'")
    db.committed("pool")
    res = run("verify", path, "pool", ok=False)
    assert res.returncode == 2 and "1 rows fail their checksum" in res.stdout
    before = db.dataset("pool").version
    np.save(tmp_path / "v.npy", np.ones((N, D), dtype=np.float32))
    res = run("import", path, "pool", "--vectors", tmp_path / "v.npy", "--checkpoint", "2",
              "--ids", _ids_file(tmp_path), ok=False)
    assert res.returncode == 2 and "row" in res.stderr and "damaged" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert gradstore.open(path).database.dataset("pool").version == before


def _ids_file(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("".join(f"p{i}\n" for i in range(N)))
    return f


def test_a_table_without_checksums_is_noted_once_per_command(tmp_path):
    """Reading a table that cannot be checked works, but says so once (with the fix)."""
    src = Path(__file__).parent.parent / "fixtures" / "store_v0"
    path = tmp_path / "old"
    shutil.copytree(src, path)
    res = run("select", path, "--pool", "pool", "--budget", "5", "--method", "less")
    notes = [line for line in res.stderr.splitlines() if line.startswith("gradstore: note:")]
    assert len(notes) == 1, res.stderr
    assert "'pool'" in notes[0] and "--add-checksums" in notes[0]
    run("verify", path, "pool", "--add-checksums")
    import subprocess
    import sys

    # a new process (this one has noted the table already): after the fix, no note at all
    res = subprocess.run([sys.executable, "-m", "gradstore", "select", str(path), "--pool",
                          "pool", "--budget", "5", "--method", "less", "--quiet"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "gradstore: note:" not in res.stderr, res.stderr


def test_a_changed_weight_in_the_log_is_caught(built, tmp_path):
    path, _ = built
    sel = gradstore.open(path).selection("latest")
    f = data_files(path / "_selections.lance")[-1]
    raw = f.read_bytes()
    w = np.float64(sel.weights[0]).tobytes()
    assert raw.count(w) >= 1
    f.write_bytes(raw.replace(w, np.float64(sel.weights[0] * 2).tobytes(), 1))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"id": "p{i}", "text": "t"}}\n' for i in range(N)))
    res = run("export", path, "--selection", "latest", "--data", data, "--out",
              tmp_path / "o.jsonl", ok=False)
    assert res.returncode == 2 and "fails its checksum" in res.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_a_deleted_newest_manifest_is_not_a_silent_rollback(built):
    """Lance would open the previous version (fewer rows) without a word; the store refuses,
    and restore makes an older version current on purpose."""
    path, X = built
    manifests = sorted((path / "pool.lance" / "_versions").glob("*.manifest"))
    newest = min(manifests, key=lambda p: int(p.stem))  # names count down: smallest = newest
    newest.unlink()
    assert lance.dataset(str(path / "pool.lance")).count_rows() < N, "Lance rolled back"
    for args in (["select", path, "--pool", "pool", "--target", "tgt", "--budget", "5"],
                 ["info", path, "pool"]):
        res = run(*args, ok=False)
        assert res.returncode == 2 and "newest manifest is missing" in res.stderr, args
    listing = run("restore", path, "pool").stdout
    version = int(listing.splitlines()[1].split(":")[0])
    run("restore", path, "pool", "--version", str(version))
    store = gradstore.open(path)
    assert store.num_rows("pool") == N - FRAG
    np.testing.assert_array_equal(store.vectors("pool")[1], X[: N - FRAG])
