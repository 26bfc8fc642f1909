"""Fault soak: many randomized faults injected into a real store, each followed by the
commands a user would run next; counts how each command ended.

Every trial starts from a copy of one healthy store (a 3,000-row pool in 6 fragments, two
checkpoints; a target; a stored selection) and injects one fault:

* damage to files: bytes flipped or zeroed in a data file or a manifest, a data file
  truncated or deleted, a manifest or all of a table's manifests deleted (the pool, the
  target or the selection log);
* interruption: ``kill -9`` at a random moment of ``import``, ``select``, ``export`` or
  ``ingest`` (a tiny model), then the same command again;
* concurrency: two imports of one table at once; rows deleted from the pool by another
  process while a ``select`` is held between computing and naming its answer (a pause
  point, ``select-computed``): it must answer from the version it read.

Then ``select`` (gtp and less), ``export`` of the stored selection and ``vectors`` run, and
each outcome is classed against the healthy store's answers:

* ``correct``: exit 0 and the same answer;  ``refused``: exit 2 with one line;
* ``WRONG``: exit 0 with another answer (a silent wrong answer);
* ``CRASH``: another exit status or a traceback;
* ``LOST``: after an interruption, rows committed before it are gone or duplicated.

    python benchmarks/fault_soak.py --faults 240 --out benchmarks/results   # ~10 min here
    python benchmarks/fault_soak.py --tiny     # seconds: every fault kind once, a smaller store
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
TINY = {"N": 600, "D": 32, "FRAG": 100, "EXTRA_ROWS": 4000, "CHAT_ROWS": 24, "MAX_DELAY": 2.0}
"""The tiny mode's sizes (make test): every fault kind once, on a smaller store."""
DAMAGE = ("flip", "zero", "truncate", "delete-data", "delete-manifest", "delete-versions",
          "flip-manifest")
INTERRUPT = ("kill-import", "kill-select", "kill-export", "kill-ingest", "two-imports",
             "drop-during-select")
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
    """The template store, its inputs, and the answers every trial is compared with."""
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
    code, out, err = run_cli("select", store, "--pool", "pool", "--target", "tgt", "--budget",
                             "30", "--method", method, "--format", "json", "--quiet")
    if code != 0:
        return code, err
    got = json.loads(out)
    got = got[0] if isinstance(got, list) else got
    return 0, (got["ids"], np.round(got["weights"], 6).tolist())


def _ingest_args(store: Path, ref: dict) -> list:
    return ["ingest", store, "pool", "--model", ref["model"], "--data", ref["chat"],
            "--proj-dim", "16", "--device", "cpu", "--quiet", "--write-rows", "8",
            "--batch-size", "4"]


# --------------------------------------------------------------------------- faults


def damage(store: Path, kind: str, rng: np.random.Generator) -> str:
    """Inject one damage fault; returns what was done."""
    table = str(rng.choice(["pool", "pool", "tgt", "_selections"]))
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


def judge(ref: dict, store: Path, emit=None) -> list[tuple[str, str]]:
    """Run what a user runs next; class each outcome (operation, class)."""
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
        ok = ids == ref["vectors"][0] and np.array_equal(X, ref["vectors"][1])
        out.append(("vectors", "correct" if ok else "WRONG"))
    except gradstore.GradstoreError as exc:
        out.append(("vectors", "refused" if "\n" not in str(exc) else "CRASH"))
    except Exception:  # noqa: BLE001 - any other exception is what the soak looks for
        out.append(("vectors", "CRASH"))
    return out


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


def drop_during_select(ref: dict, store: Path, rng: np.random.Generator) -> list:
    """A select held at its ``select-computed`` pause point while another process deletes
    rows of the pool (positions shift); its answer must be the healthy store's."""
    from gradstore.pause import PAUSE_ENV

    pause = store.parent / "pause"
    pause.mkdir()
    env = dict(os.environ, **{PAUSE_ENV: f"select-computed={pause}"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradstore", "select", str(store), "--pool", "pool", "--target",
         "tgt", "--budget", "30", "--method", "gtp", "--format", "json", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(pause.glob("select-computed.*.waiting")) and proc.poll() is None:
        assert time.monotonic() < deadline, "select never reached its pause point"
        time.sleep(0.01)
    doomed = rng.choice(ref["vectors"][0], 5, replace=False).tolist() + ref["gtp"][1][0][:2]
    db = gradstore.open(store).database
    db.dataset("pool").delete("id IN (" + ", ".join(f"'{i}'" for i in doomed) + ")")
    db.committed("pool")
    (pause / "select-computed.go").touch()
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        return [("drop-during-select", _class((proc.returncode, err), ref["gtp"]))]
    got = json.loads(out)[0]
    return [("drop-during-select",
             _class((0, (got["ids"], np.round(got["weights"], 6).tolist())), ref["gtp"]))]


def interrupt(ref: dict, store: Path, kind: str, rng: np.random.Generator) -> list:
    """One interruption, then the same command again; the outcomes."""
    if kind == "drop-during-select":
        return drop_during_select(ref, store, rng)
    delay = float(rng.uniform(0.5, MAX_DELAY))
    if kind in ("kill-import", "two-imports"):
        args = ("import", store, "extra", "--vectors", store.parent.parent / "extra.npy")
        if kind == "two-imports":
            procs = [spawn(*args), spawn(*args)]
            codes = sorted(p.wait() for p in procs)
            ok = codes[0] == 0 and codes[1] in (0, 2)
        else:
            kill_at(spawn(*args), delay)
            code, _, err = run_cli(*args)
            ok = code == 0 or (code == 2 and "already in table" in err)
        ids = gradstore.open(store).ids("extra")
        whole = ids == [str(i) for i in range(EXTRA_ROWS)]
        return [(kind, "correct" if ok and whole else "LOST")]
    if kind == "kill-select":
        kill_at(spawn("select", store, "--pool", "pool", "--target", "tgt", "--budget", "30",
                      "--quiet"), delay)
        sels = gradstore.open(store).selections()
        n0 = ref["logged"]
        good = all(s.ids == ref["gtp"][1][0] for s in sels[n0:])
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write fault_soak.{json,md} here")
    ap.add_argument("--tiny", action="store_true", help="a dozen faults (make test)")
    ap.add_argument("--judge", nargs="+", metavar="REF STORE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.judge:
        ref = pickle.loads(Path(args.judge[0]).read_bytes())
        for i, store in enumerate(args.judge[1:]):
            judge(ref, Path(store), emit=lambda o, i=i: print("OUTCOME", i, o[0], o[1],
                                                              flush=True))
        return
    if args.tiny:
        globals().update(TINY)
    n = len(DAMAGE) + len(INTERRUPT) if args.tiny else args.faults
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_chat_model(work / "model")
        ref = build(work, rng, model)
        ref_file = work / "ref.pkl"
        ref_file.write_bytes(pickle.dumps(ref))
        kinds = [*DAMAGE, *INTERRUPT]
        trials, damaged = [], []
        for i in range(n):
            # every kind once, then damage three times as often as the (slower) interruptions
            p = np.array([3.0] * len(DAMAGE) + [1.0] * len(INTERRUPT))
            kind = kinds[i] if i < len(kinds) else str(rng.choice(kinds, p=p / p.sum()))
            store = shutil.copytree(ref["store"], work / f"t{i}" / "s")
            if kind in DAMAGE:  # judged together below, one child process for all
                trials.append({"fault": kind, "what": damage(store, kind, rng)})
                damaged.append((trials[-1], store))
                continue
            trials.append({"fault": kind, "what": kind,
                           "outcomes": interrupt(ref, store, kind, rng)})
            _show(len(trials), n, trials[-1])
            shutil.rmtree(store.parent)
        print(f"judging {len(damaged)} damaged stores ...", flush=True)
        judged = judge_isolated(ref_file, [store for _, store in damaged])
        for (trial, _), outcomes in zip(damaged, judged, strict=True):
            trial["outcomes"] = outcomes
            _show(trials.index(trial) + 1, n, trial)
    report(trials, time.perf_counter() - t0, args)


def _show(i: int, n: int, trial: dict) -> None:
    outcomes = trial["outcomes"]
    print(f"[{i}/{n}] {trial['what']}: " + ", ".join(f"{a} {b}" for a, b in outcomes),
          flush=True)
    bad = [o for o in outcomes if o[1] in BAD]
    if bad:
        print(f"    !!! {bad}", flush=True)


def report(trials: list[dict], seconds: float, args) -> None:
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
