"""The store's append-only logs and id matching, each answer checked against one worked out
here from the stored rows: a selection or evaluation id holding a quote is found exactly
(not another id it would become with the quote stripped), ``latest`` is the newest record
(of equal times, the last appended) while reading only that record, and ``match_ids``
places each stored row's id in the given order."""

import lance
import numpy as np
import pyarrow as pa
import pytest

import gradstore
from gradstore.errors import GradstoreError
from gradstore.store import tables as folder
from gradstore.store.integrity import DamagedTable
from gradstore.store.selections import SELECTIONS_SCHEMA, SELECTIONS_TABLE, Selection

QUOTED = ["ab", "a'b", "a''b", "'ab'", "' OR '1'='1", "x"]


def selection(sid: str, created: str, k: int = 2) -> Selection:
    rng = np.random.default_rng(sum(map(ord, sid)))
    return Selection(selection_id=sid, method="less", budget=str(k), k=k, pool="pool",
                     target=None, ids=[f"{sid}-{i}" for i in range(k)],
                     weights=rng.random(k), residual=float(rng.random()), seconds=0.0,
                     created=created)


@pytest.fixture
def db(tmp_path):
    return gradstore.open(tmp_path / "store").database


def stored_log(db, table=SELECTIONS_TABLE) -> list[dict]:
    """The log's rows as Lance itself reads them, in log order."""
    return lance.dataset(folder.table_uri(db.uri, table)).to_table().to_pylist()


def test_a_quoted_selection_id_is_found_exactly(db):
    sels = [selection(s, f"2024-01-0{i + 1}") for i, s in enumerate(QUOTED)]
    db.save_selections(sels[:3])
    db.save_selections(sels[3:])
    for want in sels:
        got = db.selection(want.selection_id)
        assert got.selection_id == want.selection_id
        assert got.ids == want.ids
        np.testing.assert_array_equal(got.weights, want.weights)
    with pytest.raises(GradstoreError, match="is not in store"):
        db.selection("a'b'")  # stripped of quotes it would be "ab", which is stored


def test_a_quoted_selection_ids_evaluations_are_its_own(db):
    results = {}
    for i, sid in enumerate(QUOTED):
        for j in range(2):
            results[f"e{i}{j}"] = (sid, f"2024-0{2 - j}-0{i + 1}", {"score": i * 10 + j})
    for eid, (sid, created, result) in results.items():
        db.save_evaluation(eid, sid, created, result)
    for sid in QUOTED:
        got = db.evaluations(sid)
        want = sorted(((c, e, r) for e, (s, c, r) in results.items() if s == sid))
        assert [g["evaluation_id"] for g in got] == [e for _, e, _ in want]
        assert [g["score"] for g in got] == [r["score"] for _, _, r in want]
    everything = db.evaluations()
    assert sorted(e["evaluation_id"] for e in everything) == sorted(results)
    assert [e["created"] for e in everything] == sorted(c for _, c, _ in results.values())


def newest(records: list[dict]) -> str:
    """The newest record's id: the greatest ``created`` (null as ""), the last of equals."""
    best = max(range(len(records)), key=lambda i: (records[i]["created"] or "", i))
    return records[best]["selection_id"]


def test_latest_is_the_newest_record_and_of_equal_times_the_last(db):
    with pytest.raises(GradstoreError, match="holds no selections"):
        db.selection("latest")
    order = [("a", "2024-03-01"), ("b", "2024-05-01"), ("c", "2024-02-01"),
             ("d", "2024-05-01"), ("e", "2024-04-30")]
    for sid, created in order:
        db.save_selections([selection(sid, created)])
        assert db.selection("latest").selection_id == newest(stored_log(db))
    assert db.selection("latest").selection_id == "d"
    undated = selection("u", "").to_record() | {"created": None}  # an old record's null
    db.selection_log.append([undated])
    assert db.selection("latest").selection_id == newest(stored_log(db)) == "d"
    latest = db.selection("latest")
    assert latest.ids == selection("d", "").ids


def test_latest_on_undated_records_is_the_last_appended(db):
    for sid in ("p", "q", "r"):
        db.selection_log.append([selection(sid, "").to_record() | {"created": None}])
    assert db.selection("latest").selection_id == newest(stored_log(db)) == "r"


def test_latest_reads_only_the_record_it_returns(db):
    """An older record failing its checksum is not read by ``latest`` (it reads the times,
    then one record); reading the whole log or that record still refuses it."""
    bad = selection("old", "2024-01-01").to_record()
    bad["weights"] = [w * 2 for w in bad["weights"]]  # no longer matches its checksum
    db.selection_log.append([bad])  # (append checks what is already there: nothing yet)
    newer = selection("new", "2024-06-01")
    folder.append(db.uri, SELECTIONS_TABLE,  # (not through append: it would refuse)
                  pa.Table.from_pylist([newer.to_record()], schema=SELECTIONS_SCHEMA))
    db.committed(SELECTIONS_TABLE)
    assert db.selection("latest").ids == newer.ids
    with pytest.raises(DamagedTable, match="fails its checksum"):
        db.selection("old")
    with pytest.raises(DamagedTable, match="fails its checksum"):
        db.selections()
    with pytest.raises(DamagedTable, match="fails its checksum"):
        db.save_selections([selection("later", "2024-07-01")])  # nothing added to it


def test_match_ids_places_each_stored_id(db, rng):
    ids = [f"ex{i}" for i in range(40)] + ["it's", "its"]
    store = gradstore.open(db.uri)
    store.import_vectors("pool", rng.standard_normal((len(ids), 4)).astype(np.float32),
                         ids=ids)
    stored = store.ids("pool")
    given = [ids[i] for i in rng.permutation(len(ids))]
    got = db.match_ids("pool", given, len(given))
    assert got.dtype == np.int64
    assert [given[i] for i in got] == stored
    assert got.tolist() == [given.index(s) for s in stored]
    swapped = [g if g != "its" else "it''s" for g in given]
    with pytest.raises(GradstoreError, match=r"1 stored ids missing \(e.g. \['its'\]\), "
                                             r"1 new ids"):
        db.match_ids("pool", swapped, len(swapped))
    with pytest.raises(GradstoreError, match=r"0 stored ids missing \(e.g. \[\]\), 1 new ids"):
        db.match_ids("pool", given + ["extra"], len(given) + 1)
    with pytest.raises(GradstoreError, match=r"2 stored ids missing \(e.g. \['ex0', 'ex1'\]\)"
                                             r", 0 new ids"):
        db.match_ids("pool", [g for g in given if g not in ("ex0", "ex1")], len(given) - 2)
