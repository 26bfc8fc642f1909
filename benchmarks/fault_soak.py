"""Fault soak: many randomized faults injected into a real store, each followed by the
commands a user would run next; counts how each command ended.

Every trial starts from a copy of one healthy store (a 3,000-row pool in 6 fragments, two
checkpoints; a target; a stored selection) and injects one fault:

* damage to files: bytes flipped or zeroed in a data file or a manifest, a data file
  truncated or deleted, a manifest or all of a table's manifests deleted (the pool, the
  target or the selection log);
* changes made through Lance or gradstore, not to bytes: the ``row`` values of two pool rows
  swapped by a Lance update (a permutation a plain sum would not see: ``verify`` must find
  it); every ``crc_`` column of the pool dropped (answers unchecked, but still correct); the
  pool compacted, then ``restore`` of the version before (it must succeed);
* interruption: ``kill -9`` at a random moment of ``import``, ``select``, ``export`` or
  ``ingest`` (a tiny model), then the same command again; ``kill -9`` of an ``import``
  holding its table's write lock (pause point ``lock-taken``), then the same import again:
  it must succeed at once with every row once (the OS let the lock go: never a stuck store);
* concurrency: two imports of one table at once; another writer deleting rows of the pool
  (positions shift), or appending copies of the target's rows under new ids (an answer that
  read them would differ), while a ``select`` is held at a pause point chosen at random
  (``select-pinned``: it has pinned the versions it reads; ``select-computed``: between
  computing and naming its answer): it must answer from the version it read;
* distributed: bytes flipped in a pool data file, then ``select --ray local`` (skipped when
  Ray is not installed): its answer, or its one-line refusal, from Ray workers.

Then ``select`` (gtp and less), ``export`` of the stored selection and ``vectors`` run, and
each outcome is classed against the healthy store's answers (the damaged stores of the
first pass are judged in a child process while the later trials run, and the ``--ray``
select runs beside them too: the soak's wall time, not what it checks):

* ``correct``: exit 0 and the same answer;  ``refused``: exit 2 with one line;
* ``WRONG``: exit 0 with another answer (a silent wrong answer);
* ``CRASH``: another exit status or a traceback; also a ``restore`` of a kept version, or
  the import after a killed lock holder, that does not succeed;
* ``LOST``: after an interruption, rows committed before it are gone or duplicated.

``verify`` after the ``row`` swap is ``refused`` when it reports the damage (exit 2), and
``WRONG`` when it calls the table healthy.

    python benchmarks/fault_soak.py --faults 240 --out benchmarks/results   # ~10 min here
    python benchmarks/fault_soak.py --tiny     # minutes: every fault kind once, a smaller store
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradstore  # noqa: E402
from benchmarks.tiny_model import tiny_chat_model  # noqa: E402
from gradstore.cli.main import main as cli_main  # noqa: E402
from gradstore.store.database import RowBlock  # noqa: E402

N, D, FRAG = 3000, 64, 500
EXTRA_ROWS, CHAT_ROWS, MAX_DELAY = 40000, 160, 6.0
TINY = {"N": 600, "D": 32, "FRAG": 100, "EXTRA_ROWS": 4000, "CHAT_ROWS": 24, "MAX_DELAY": 1.0}
"""The tiny mode's sizes (make test): every fault kind once, on a smaller store."""
DAMAGE = ("flip", "zero", "truncate", "delete-data", "delete-manifest", "delete-versions",
          "flip-manifest")
TAMPER = ("row-value", "no-checksums", "compact-restore")
INTERRUPT = ("kill-import", "kill-select", "kill-export", "kill-ingest", "two-imports",
             "drop-during-select", "ingest-during-select", "kill-lock-holder")
RAY = ("ray-flip",)
WEIGHT = {**dict.fromkeys(DAMAGE, 3.0), **dict.fromkeys(TAMPER, 2.0),
          **dict.fromkeys(INTERRUPT, 1.0), "ray-flip": 0.5}
"""How often each kind is drawn after every kind ran once (the slower kinds less often)."""
SELECT = ("--pool", "pool", "--target", "tgt", "--budget", "30", "--format", "json", "--quiet")
BAD = ("WRONG", "CRASH", "LOST")


def run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradstore", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_at(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


# --------------------------------------------------------------------------- the healthy store


def build(work: Path, rng: np.random.Generator, model: Path | None) -> dict:
    """The template store, its inputs, and the answers every trial is compared with
    (``select --ray local``'s is computed when a trial first needs it: :func:`ray_reference`)."""
    store_path = work / "template"
    store = gradstore.open(store_path)
    X = rng.standard_normal((N, 2, D)).astype(np.float32)
    ids = [f"ex{i}" for i in range(N)]
    store.import_vectors("pool", X[:FRAG, 0], "0", ids=ids[:FRAG], lr=1.0, kind="pool")
    store.import_vectors("pool", X[:FRAG, 1], "1", ids=ids[:FRAG], lr=1.0)
    for s in range(FRAG, N, FRAG):
        store.database.append_rows("pool", RowBlock(
            ids=ids[s:s + FRAG], rows=list(range(s, s + FRAG)),
            vectors=[X[s:s + FRAG, 0], X[s:s + FRAG, 1]]))
    T = rng.standard_normal((6, 2, D)).astype(np.float32) + X[:6]
    store.import_vectors("tgt", T[:, 0], "0", lr=1.0, kind="target")
    store.import_vectors("tgt", T[:, 1], "1", lr=1.0, kind="target")
    np.save(work / "extra.npy", rng.standard_normal((EXTRA_ROWS, 128)).astype(np.float32))
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": f"example {i}"}) + "\n" for i in ids))
    sel = store.select("pool", "tgt", budget=30)
    code, _, err = run_cli("export", store_path, "--selection", sel.selection_id, "--data", data,
                           "--out", work / "ref.jsonl")
    assert code == 0, err
    ref = {"store": store_path, "data": data, "selection": sel.selection_id,
           "gtp": _answer(store_path, "gtp"), "less": _answer(store_path, "less"),
           "export": (work / "ref.jsonl").read_text(), "vectors": store.vectors("pool")}
    ref["logged"] = len(store.selections())
    if model is not None:
        ref["chat"] = write_chat(work / "chat.jsonl", CHAT_ROWS, rng)
        ref["model"] = model
        code, _, err = run_cli(*_ingest_args(work / "ingest-ref", ref))
        assert code == 0, err
        ref["ingested"] = gradstore.open(work / "ingest-ref").vectors("pool")
    return ref


WORDS = "the a capital of France is Paris add sort reverse letters words count".split()


def write_chat(path: Path, n: int, rng: np.random.Generator) -> Path:
    with path.open("w") as f:
        for i in range(n):
            turns = [" ".join(rng.choice(WORDS, int(rng.integers(3, 12)))) for _ in range(2)]
            f.write(json.dumps({"id": f"c{i}", "messages": [
                {"role": "user", "content": turns[0]},
                {"role": "assistant", "content": turns[1]}]}) + "\n")
    return path


def _answer(store: Path, method: str):
    return _parsed(*run_cli("select", store, *SELECT, "--method", method))


def ray_reference(ref: dict) -> tuple:
    """``select --ray local``'s answer on a copy of the healthy store (the template stays
    as it is: the select logs a selection), computed once, when first compared with."""
    if "ray" not in ref:
        copy = shutil.copytree(ref["store"], Path(ref["store"]).parent / "ray-reference")
        ref["ray"] = ray_answer(copy)
        assert ref["ray"][0] == 0, ref["ray"]
    return ref["ray"]


RAY_ADDRESS = "local"
"""The cluster of ``select --ray`` (``--ray``; default local: a cluster of its own)."""


def ray_answer(store: Path):
    """``select --ray`` in a child process (with ``local``, a Ray session of its own)."""
    return ray_outcome(ray_child(store))


def ray_child(store: Path) -> subprocess.Popen:
    """``select --ray`` started in a child process (:func:`ray_outcome` waits for it)."""
    return subprocess.Popen([sys.executable, "-m", "gradstore", "select", str(store), *SELECT,
                             "--method", "gtp", "--ray", RAY_ADDRESS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ray_outcome(proc: subprocess.Popen):
    out, err = proc.communicate(timeout=600)
    return _parsed(proc.returncode, out, err)


def _parsed(code: int, out: str, err: str):
    """A select's outcome: (exit status, error) or (0, (ids, weights to 6 places))."""
    if code != 0:
        return code, err
    got = json.loads(out)
    got = got[0] if isinstance(got, list) else got
    return 0, (got["ids"], np.round(got["weights"], 6).tolist())


def _import_args(store: Path) -> tuple:
    return ("import", store, "extra", "--vectors", store.parent.parent / "extra.npy")


def _whole_extra(store: Path) -> bool:
    """The imported table holds every id once, in order."""
    try:
        return gradstore.open(store).ids("extra") == [str(i) for i in range(EXTRA_ROWS)]
    except gradstore.GradstoreError:
        return False


def _ingest_args(store: Path, ref: dict) -> list:
    return ["ingest", store, "pool", "--model", ref["model"], "--data", ref["chat"],
            "--proj-dim", "16", "--device", "cpu", "--quiet", "--write-rows", "8",
            "--batch-size", "4"]


# --------------------------------------------------------------------------- faults


def damage(store: Path, kind: str, rng: np.random.Generator, table: str | None = None) -> str:
    """Inject one damage fault (into ``table``, else one drawn); returns what was done."""
    table = table or str(rng.choice(["pool", "pool", "tgt", "_selections"]))
    tdir = store / f"{table}.lance"
    if kind in ("delete-manifest", "delete-versions", "flip-manifest"):
        files = sorted((tdir / "_versions").glob("*.manifest"))
    else:
        files = sorted((tdir / "data").glob("*.lance"))
    f = files[rng.integers(len(files))]
    raw = bytearray(f.read_bytes())
    if kind in ("flip", "zero", "flip-manifest"):
        n = int(rng.integers(1, min(4096, len(raw)) + 1))
        at = int(rng.integers(0, len(raw) - n + 1))
        for i in range(at, at + n):
            raw[i] = 0 if kind == "zero" else raw[i] ^ int(rng.integers(1, 256))
        f.write_bytes(bytes(raw))
        return f"{kind} {n} bytes at {at} of {table}/{f.parent.name}/{f.name[:12]}"
    if kind == "truncate":
        size = int(rng.integers(0, len(raw)))
        f.write_bytes(bytes(raw[:size]))
        return f"truncate {table}/{f.name[:12]} to {size} of {len(raw)} bytes"
    if kind == "delete-versions":
        shutil.rmtree(tdir / "_versions")
        return f"delete every manifest of {table}"
    f.unlink()
    return f"delete {table}/{f.parent.name}/{f.name[:12]}"


MEMORY_LIMIT = 8 << 30  # a judged process may map this much (damage can make Lance allocate)


def judge_isolated(ref_file: Path, stores: list[Path]) -> list[list[tuple[str, str]]]:
    """:func:`judge` of each store, in child processes limited to MEMORY_LIMIT of address
    space, so a fault that makes a reader allocate without bound is counted (CRASH) instead
    of taking the machine down; the operation it stopped in is named. One child judges the
    stores in turn; when a child dies, the next store goes to a new one."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    ops = ["select-gtp", "select-less", "export", "vectors"]
    results: list[list[tuple[str, str]]] = []
    while len(results) < len(stores):
        rest = [str(s) for s in stores[len(results):]]
        done = subprocess.run([sys.executable, __file__, "--judge", str(ref_file), *rest],
                              capture_output=True, text=True, preexec_fn=limit)
        got: dict[int, list[tuple[str, str]]] = {}
        for line in done.stdout.splitlines():
            if line.startswith("OUTCOME "):
                _, i, op, cls = line.split()[:4]
                got.setdefault(int(i), []).append((op, cls))
        finished = len(got) if done.returncode == 0 else max(len(got) - 1, 0)
        results += [got[i] for i in range(finished)]
        if done.returncode != 0:
            out = got.get(finished, [])
            out.append((ops[len(out)] if len(out) < len(ops) else "judge", "CRASH"))
            results.append(out)
            print(f"    judging process ended with exit {done.returncode}: "
                  f"{done.stderr.strip()[-300:]!r}", flush=True)
    return results


def judge(ref: dict, store: Path, emit=None, ordered: bool = True) -> list[tuple[str, str]]:
    """Run what a user runs next; class each outcome (operation, class). ``ordered=False``:
    ``vectors`` may return the pool's rows in another order (a Lance update moves the rows
    it rewrites to the end), each id still with its own vectors."""
    out = _Outcomes(emit)
    for method in ("gtp", "less"):
        got = _answer(store, method)
        out.append((f"select-{method}", _class(got, ref[method])))
    dest = store.parent / "out.jsonl"
    code, _, err = run_cli("export", store, "--selection", ref["selection"], "--data",
                           ref["data"], "--out", dest)
    same = code == 0 and dest.read_text() == ref["export"]
    out.append(("export", _class((code, err) if code else (0, same), (0, True))))
    try:
        ids, X = gradstore.open(store).vectors("pool")
        rids, RX = ref["vectors"]
        if not ordered:
            ids, X, rids, RX = *_by_id(ids, X), *_by_id(rids, RX)
        ok = ids == rids and np.array_equal(X, RX)
        out.append(("vectors", "correct" if ok else "WRONG"))
    except gradstore.GradstoreError as exc:
        out.append(("vectors", "refused" if "\n" not in str(exc) else "CRASH"))
    except Exception:  # noqa: BLE001 - any other exception is what the soak looks for
        out.append(("vectors", "CRASH"))
    return out


def _by_id(ids: list[str], X: np.ndarray) -> tuple[list[str], np.ndarray]:
    order = np.argsort(np.asarray(ids))
    return [ids[i] for i in order], X[order]


class _Outcomes(list):
    """A list of outcomes that also prints each as it is added (for a judging child)."""

    def __init__(self, emit) -> None:
        super().__init__()
        self.emit = emit

    def append(self, item) -> None:
        super().append(item)
        if self.emit:
            self.emit(item)


def _class(got, want) -> str:
    code, value = got
    if code == 0:
        return "correct" if got == want else "WRONG"
    if code == 2 and len(value.strip().splitlines()) == 1 and "Traceback" not in value:
        return "refused"
    return "CRASH"


def paused(store: Path, point: str, *args) -> tuple[subprocess.Popen, Path]:
    """``gradstore ARGS`` in a child process, once it waits at pause point ``point`` (or has
    ended without reaching it); the child and its pause folder."""
    from gradstore.pause import PAUSE_ENV

    pause = store.parent / "pause"
    pause.mkdir()
    env = dict(os.environ, **{PAUSE_ENV: f"{point}={pause}"})
    proc = subprocess.Popen([sys.executable, "-m", "gradstore", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(pause.glob(f"{point}.*.waiting")) and proc.poll() is None:
        assert time.monotonic() < deadline, f"{args[0]} never reached pause point {point}"
        time.sleep(0.01)
    return proc, pause


def during_select(ref: dict, store: Path, kind: str, rng: np.random.Generator):
    """A select held at a pause point drawn at random (``select-pinned``: its versions just
    pinned; ``select-computed``: between computing and naming its answer) while this process
    changes the pool: ``drop-``, deletes rows (positions shift); ``ingest-``, appends copies
    of the target's rows under new ids (an answer that read them would differ). The answer
    must be the healthy store's, or a refusal."""
    point = str(rng.choice(["select-pinned", "select-computed"]))
    proc, pause = paused(store, point, "select", store, *SELECT, "--method", "gtp")
    held = "" if proc.poll() is None else " (ended before it)"
    db = gradstore.open(store).database
    if kind == "drop-during-select":
        doomed = rng.choice(ref["vectors"][0], 5, replace=False).tolist() + ref["gtp"][1][0][:2]
        db.dataset("pool").delete("id IN (" + ", ".join(f"'{i}'" for i in doomed) + ")")
        what = f"{kind} at {point}{held}: delete {len(doomed)} rows"
    else:
        block = target_copies(store)
        db.append_rows("pool", block)
        what = f"{kind} at {point}{held}: append {len(block.ids)} copies of the target's rows"
    db.committed("pool")
    (pause / f"{point}.go").touch()
    out, err = proc.communicate(timeout=300)
    return what, [(kind, _class(_parsed(proc.returncode, out, err), ref["gtp"]))]


def target_copies(store: Path) -> RowBlock:
    """The target's rows as new pool rows (ids ``copy-<id>``, rows after the pool's)."""
    s = gradstore.open(store)
    ids = s.ids("tgt")
    n = int(s.database.row_indices("pool", s.database.dataset("pool")).max()) + 1
    return RowBlock(ids=[f"copy-{i}" for i in ids], rows=list(range(n, n + len(ids))),
                    vectors=[s.vectors("tgt", c)[1] for c in ("0", "1")])


def kill_lock_holder(store: Path):
    """An import killed while it holds the table's write lock (pause point ``lock-taken``);
    the same import again must succeed at once, every row once (the OS let the lock go)."""
    args = _import_args(store)
    proc, _ = paused(store, "lock-taken", *args)
    held = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    t0 = time.monotonic()
    code, _, err = run_cli(*args)
    took = time.monotonic() - t0
    what = (f"{'kill -9' if held else 'ended before'} lock-taken, import again: exit {code} "
            f"in {took:.2f} s" + (f" ({err.strip()[-200:]})" if code else ""))
    if code != 0:  # a store left locked (or any other failure) is not a refusal here
        return what, [("kill-lock-holder", "CRASH")]
    return what, [("kill-lock-holder", "correct" if _whole_extra(store) else "LOST")]


def inline(ref: dict, store: Path, kind: str, rng: np.random.Generator):
    """A fault that is not damage to bytes judged later: (what was done, the outcomes)."""
    if kind in TAMPER:
        return tamper(ref, store, kind, rng)
    if kind in ("drop-during-select", "ingest-during-select"):
        return during_select(ref, store, kind, rng)
    if kind == "kill-lock-holder":
        return kill_lock_holder(store)
    if kind == "ray-flip":
        what = damage(store, "flip", rng, table="pool")
        return what, ray_judged(ref, ray_answer(store))
    return kind, interrupt(ref, store, kind, rng)


def ray_judged(ref: dict, got) -> list[tuple[str, str]]:
    return [("select-ray", _class(got, ray_reference(ref) if got[0] == 0 else None))]


def tamper(ref: dict, store: Path, kind: str, rng: np.random.Generator):
    """A change made through Lance or gradstore, then :func:`judge`."""
    import lance

    pool = store / "pool.lance"
    if kind == "row-value":
        what = swap_rows(pool, rng)
        code, _, err = run_cli("verify", store, "pool")  # must find the swap
        return what, [("verify", "WRONG" if code == 0 else _class((code, err), None)),
                      *judge(ref, store, ordered=False)]
    if kind == "no-checksums":
        crcs = [c for c in lance.dataset(pool).schema.names if c.startswith("crc_")]
        lance.dataset(pool).drop_columns(crcs)
        return f"drop {', '.join(crcs)} of pool", judge(ref, store)
    db = gradstore.open(store).database
    before = db.dataset("pool").version
    db.compact("pool")
    code, _, err = run_cli("restore", store, "pool", "--version", before)
    what = f"compact pool, restore version {before}: exit {code}" + (
        f" ({err.strip()[-200:]})" if code else "")
    return what, [("restore", "correct" if code == 0 else "CRASH"), *judge(ref, store)]


def swap_rows(pool: Path, rng: np.random.Generator) -> str:
    """Swap the ``row`` values of two pool rows by Lance updates (ids, vectors and the
    rows' checksums unchanged); a permutation, so a plain sum of the column would not see it."""
    import lance

    a, b = (f"ex{i}" for i in rng.choice(N, 2, replace=False))
    got = lance.dataset(pool).to_table(columns=["id", "row"], filter=f"id IN ('{a}', '{b}')")
    row = dict(zip(got.column("id").to_pylist(), got.column("row").to_pylist(), strict=True))
    lance.dataset(pool).update({"row": str(row[b])}, where=f"id = '{a}'")
    lance.dataset(pool).update({"row": str(row[a])}, where=f"id = '{b}'")
    return f"swap the row values of {a} ({row[a]}) and {b} ({row[b]}) by Lance updates"


def interrupt(ref: dict, store: Path, kind: str, rng: np.random.Generator) -> list:
    """One interruption, then the same command again; the outcomes."""
    delay = float(rng.uniform(0.5, MAX_DELAY))
    if kind in ("kill-import", "two-imports"):
        args = _import_args(store)
        if kind == "two-imports":
            procs = [spawn(*args), spawn(*args)]
            codes = sorted(p.wait() for p in procs)
            ok = codes[0] == 0 and codes[1] in (0, 2)
        else:
            kill_at(spawn(*args), delay)
            code, _, err = run_cli(*args)
            ok = code == 0 or (code == 2 and "already in table" in err)
        return [(kind, "correct" if ok and _whole_extra(store) else "LOST")]
    if kind == "kill-select":
        kill_at(spawn("select", store, "--pool", "pool", "--target", "tgt", "--budget", "30",
                      "--quiet"), delay)
        sels = gradstore.open(store).selections()
        n0 = ref["logged"]
        good = all(s.ids == ref["gtp"][1][0] for s in sels[n0:])
        if not (good and len(sels) in (n0, n0 + 1)):  # say which, for the report
            print(f"    kill-select after {delay:.1f} s: {len(sels) - n0} new record(s), ids "
                  + ", ".join(str(s.ids[:6]) for s in sels[n0:]) + f"; expected "
                  f"{ref['gtp'][1][0][:6]}", flush=True)
        return [(kind, "correct" if good and len(sels) in (n0, n0 + 1) else "LOST"),
                *judge(ref, store)]
    if kind == "kill-export":
        dest = store.parent / "killed.jsonl"
        kill_at(spawn("export", store, "--selection", ref["selection"], "--data", ref["data"],
                      "--out", dest), delay)
        whole = not dest.exists() or dest.read_text() == ref["export"]
        return [(kind, "correct" if whole else "WRONG")]
    # kill-ingest: the rerun must equal an uninterrupted ingestion
    args = _ingest_args(store.parent / "ingest", ref)
    kill_at(spawn(*args), delay + 2.0)
    code, _, err = run_cli(*args)
    ids, X = gradstore.open(store.parent / "ingest").vectors("pool")
    rids, RX = ref["ingested"]
    ok = code == 0 and ids == rids and np.allclose(X, RX, rtol=1e-3, atol=1e-4)
    return [(kind, "correct" if ok else "LOST")]


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write fault_soak.{json,md} here")
    ap.add_argument("--tiny", action="store_true", help="every fault kind once (make test)")
    ap.add_argument("--ray", default="local", metavar="ADDRESS",
                    help="the Ray cluster of the ray-flip trials (default local: a cluster of "
                         "their own on this machine)")
    ap.add_argument("--judge", nargs="+", metavar="REF STORE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    globals()["RAY_ADDRESS"] = args.ray
    if args.judge:
        ref = pickle.loads(Path(args.judge[0]).read_bytes())
        for i, store in enumerate(args.judge[1:]):
            judge(ref, Path(store), emit=lambda o, i=i: print("OUTCOME", i, o[0], o[1],
                                                              flush=True))
        return
    if args.tiny:
        globals().update(TINY)
    ray = _have_ray()
    kinds = [*(RAY if ray else ()), *DAMAGE, *TAMPER, *INTERRUPT]  # (slow children first)
    n = len(kinds) if args.tiny else args.faults
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_chat_model(work / "model")
        ref = build(work, rng, model)
        ref_file = work / "ref.pkl"
        ref_file.write_bytes(pickle.dumps(ref))
        trials = run_trials(ref, ref_file, work, kinds, n, rng)
    skipped = [] if ray else ["ray-flip (`import ray` failed: Ray is not installed)"]
    report(trials, time.perf_counter() - t0, args, skipped)


def _have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def run_trials(ref: dict, ref_file: Path, work: Path, kinds: list[str], n: int,
               rng: np.random.Generator) -> list[dict]:
    """``n`` trials: every kind once, then kinds drawn by :data:`WEIGHT`. Damaged stores
    are judged together at the end, in child processes; the other kinds inline."""
    p = np.array([WEIGHT[k] for k in kinds])
    trials, damaged, running = [], [], []
    early = None  # the first pass's damaged stores, judged while the next trials run
    for i in range(n):
        kind = kinds[i] if i < len(kinds) else str(rng.choice(kinds, p=p / p.sum()))
        store = shutil.copytree(ref["store"], work / f"t{i}" / "s")
        if kind in DAMAGE:  # judged together below, one child process for all
            trials.append({"fault": kind, "what": damage(store, kind, rng)})
            damaged.append((trials[-1], store))
            continue
        if early is None and damaged:
            early = _judging(ref_file, damaged)
            damaged = []
        if kind == "ray-flip":  # its child runs beside the next trials (it waits on Ray)
            trials.append({"fault": kind, "what": damage(store, "flip", rng, table="pool")})
            running.append((trials[-1], ray_child(store)))
            continue
        what, outcomes = inline(ref, store, kind, rng)
        trials.append({"fault": kind, "what": what, "outcomes": outcomes})
        _show(len(trials), n, trials[-1])
        shutil.rmtree(store.parent)
    for trial, proc in running:
        trial["outcomes"] = ray_judged(ref, ray_outcome(proc))
        _show(trials.index(trial) + 1, n, trial)
    for judging in [early, _judging(ref_file, damaged) if damaged else None]:
        if judging is None:
            continue
        for trial, outcomes in judging():
            trial["outcomes"] = outcomes
            _show(trials.index(trial) + 1, n, trial)
    return trials


def _judging(ref_file: Path, damaged: list[tuple[dict, Path]]):
    """:func:`judge_isolated` of ``damaged`` started in a thread; returns the function that
    waits for it and gives (trial, outcomes) pairs."""
    import threading

    got: list = []

    def run() -> None:
        try:
            got.append(judge_isolated(ref_file, [store for _, store in damaged]))
        except BaseException as exc:  # noqa: BLE001 - raised in the waiting thread
            got.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    print(f"judging {len(damaged)} damaged stores ...", flush=True)

    def wait() -> list:
        thread.join()
        if isinstance(got[0], BaseException):
            raise got[0]
        return list(zip([t for t, _ in damaged], got[0], strict=True))
    return wait


def _show(i: int, n: int, trial: dict) -> None:
    outcomes = trial["outcomes"]
    print(f"[{i}/{n}] {trial['what']}: " + ", ".join(f"{a} {b}" for a, b in outcomes),
          flush=True)
    bad = [o for o in outcomes if o[1] in BAD]
    if bad:
        print(f"    !!! {bad}", flush=True)


def report(trials: list[dict], seconds: float, args, skipped: list[str]) -> None:
    table: dict[str, Counter] = {}
    for t in trials:
        for _op, cls in t["outcomes"]:
            table.setdefault(t["fault"], Counter())[cls] += 1
    classes = ["correct", "refused", *BAD]
    total = Counter()
    for c in table.values():
        total.update(c)
    lines = [f"# Fault soak: {len(trials)} faults, {sum(total.values())} outcomes",
             "", "`python benchmarks/fault_soak.py "
             + ("--tiny" if args.tiny else f"--faults {args.faults}") + f" --seed {args.seed}` "
             f"({seconds / 60:.1f} min, {platform.node()}, {platform.processor() or 'cpu'})", "",
             "| fault | " + " | ".join(classes) + " |",
             "|---|" + "---|" * len(classes)]
    for fault, c in table.items():
        lines.append(f"| {fault} | " + " | ".join(str(c[k]) for k in classes) + " |")
    lines.append("| **all** | " + " | ".join(f"**{total[k]}**" for k in classes) + " |")
    bad = [t for t in trials if any(o[1] in BAD for o in t["outcomes"])]
    lines += ["", f"Silent wrong answers: {total['WRONG']}; crashes: {total['CRASH']}; "
              f"lost committed rows: {total['LOST']}."]
    lines += [f"- {t['what']}: {t['outcomes']}" for t in bad]
    lines += [f"Skipped: {k}." for k in skipped]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out and not args.tiny:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fault_soak.md").write_text(text)
        (args.out / "fault_soak.json").write_text(json.dumps(trials, indent=1))
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
