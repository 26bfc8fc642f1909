"""`gradstore evaluate`: does training on a selection help, against a baseline?

A short LoRA fine-tune on the selection's rows and on a baseline's (``random``: a uniform
draw of as many pool rows, one per seed; or another stored selection of the same pool),
with the same settings and the same number of example passes (``TrainSettings``: a set of
n rows gets ``round(passes / n)`` epochs), then answer-token loss and teacher-forced exact
match on held-out rows (:mod:`gradstore.ops.evaluate`: the code the end-to-end benchmark
runs). Seeds change the LoRA initialisation, the data order and the random draw.

Every finished (arm, seed) run is written to ``WORK/runs.json`` at once, so a stopped
evaluate resumes where it stopped; the result is stored in the store's evaluation log
(``_evaluations``) and shown by ``gradstore report``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradstore.config import TrainSettings
from gradstore.errors import GradstoreError
from gradstore.grads.data import read_records
from gradstore.ops.evaluate import Adapted, answer_scores, finetune
from gradstore.ops.export import pool_records
from gradstore.selectors.random_subset import random_subset
from gradstore.store.database import Database

RANDOM = "random"


@dataclass
class EvaluateOptions:
    model: str
    test: str
    gguf_file: str | None = None
    data: str | None = None
    baseline: str = RANDOM
    seeds: int = 1
    settings: TrainSettings = field(default_factory=TrainSettings)
    eval_batch: int = 32
    device: str = "auto"
    work: str | None = None
    progress: bool = True


@dataclass
class Evaluation:
    """Per arm (``selection`` and ``baseline``) and seed: loss and exact match."""

    selection_id: str
    baseline: str
    test: str
    test_rows: int
    runs: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    seconds: float = 0.0
    evaluation_id: str = ""

    def arm(self, name: str, metric: str) -> list[float]:
        return [r[metric] for key, r in sorted(self.runs.items()) if key.startswith(name + "|")]

    def differences(self, metric: str) -> list[float]:
        """selection - baseline, seed by seed."""
        return [a - b for a, b in zip(self.arm("selection", metric),
                                      self.arm("baseline", metric), strict=True)]

    def lines(self) -> list[str]:
        def spread(v: list[float], sign: str = "") -> str:
            text = f"{statistics.fmean(v):{sign}.2f}"
            return text if len(v) < 2 else f"{text} ± {statistics.stdev(v):.2f}"

        n = len(self.arm("selection", "loss"))
        out = [f"evaluation of selection {self.selection_id} against {self.baseline}: "
               f"{self.test_rows} test rows, {n} seed(s)",
               f"  {'arm':<12} {'examples':>8}  {'answer loss':>14}  {'exact match %':>15}"]
        for arm, label in (("selection", self.selection_id), ("baseline", self.baseline)):
            ex = self.arm(arm, "examples")
            out.append(f"  {label[:12]:<12} {ex[0] if ex else 0:>8}  "
                       f"{spread(self.arm(arm, 'loss')):>14}  "
                       f"{spread([100 * v for v in self.arm(arm, 'exact_match')]):>15}")
        dl = self.differences("loss")
        de = [100 * d for d in self.differences("exact_match")]
        out.append(f"  difference (selection - baseline): loss {spread(dl, '+')}, exact match "
                   f"{spread(de, '+')} points" + ("" if n > 1 else " (one seed: no spread; "
                                                               "use --seeds 3)"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_selection(db: Database, selection_id: str, opts: EvaluateOptions) -> Evaluation:
    """Fine-tune on the selection and on the baseline, score both, store the result."""
    if opts.seeds < 1:
        raise GradstoreError(f"--seeds {opts.seeds} must be at least 1")
    sel = db.selection(selection_id)
    test_rows = _test_rows(opts.test)
    arms = _arms(db, sel, opts)
    work = Path(opts.work) if opts.work else (
        Path(db.uri) / ".evaluate" / f"{sel.selection_id}-{opts.baseline}")
    key = _settings_key(sel, opts, test_rows)
    state_file = work / "runs.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    runs = state.get("runs", {}) if state.get("key") == key else {}
    work.mkdir(parents=True, exist_ok=True)
    todo = [(arm, seed) for seed in range(opts.seeds) for arm in ("selection", "baseline")
            if f"{arm}|{seed}" not in runs]
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    from gradstore.grads.model import load_tokenizer, shared_models

    with shared_models(), tqdm(total=len(todo), desc="evaluate", unit="fine-tune",
                               disable=not opts.progress) as bar:
        tokenizer = load_tokenizer(opts.model, opts.gguf_file) if todo else None
        for arm, seed in todo:
            runs[f"{arm}|{seed}"] = _one_run(arms[arm](seed), arm, seed, work, opts,
                                             test_rows, tokenizer)
            _write_json(state_file, {"key": key, "runs": runs})
            bar.update(1)
    result = Evaluation(sel.selection_id, opts.baseline, str(opts.test), len(test_rows),
                        runs, {"passes": opts.settings.passes, "lr": opts.settings.lr,
                               "batch_size": opts.settings.batch_size,
                               "lora_layers": opts.settings.lora_layers,
                               "max_length": opts.settings.max_length, "seeds": opts.seeds,
                               "model": opts.model, "gguf_file": opts.gguf_file},
                        time.perf_counter() - t0, uuid.uuid4().hex[:12])
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    db.save_evaluation(result.evaluation_id, sel.selection_id, created, result.to_dict())
    return result


def _test_rows(path: str) -> list[dict]:
    rows = []
    for rec in read_records(path):
        msgs = rec.fields.get("messages")
        if not (isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict)
                and msgs[-1].get("role") == "assistant" and msgs[-1].get("content")):
            raise GradstoreError(
                f"{rec.where} has no reference answer (chat rows whose last message is the "
                "assistant's answer are scored); give every test row one")
        rows.append({"id": rec.id, "messages": msgs})
    if not rows:
        raise GradstoreError(f"test file {path} has no rows; give held-out examples")
    return rows


def _arms(db: Database, sel, opts: EvaluateOptions):
    """Each arm's training rows for a seed: the selection's, and the baseline's."""
    pool_ids = db.ids(sel.pool)
    if opts.baseline == RANDOM:
        def baseline(seed: int) -> list[str]:
            return [pool_ids[i] for i in random_subset(len(pool_ids), len(sel.ids), seed)]
        base_ids = [i for s in range(opts.seeds) for i in baseline(s)]
    else:
        other = db.selection(opts.baseline)
        if other.pool != sel.pool:
            raise GradstoreError(
                f"baseline selection {other.selection_id} is of pool {other.pool!r}, the "
                f"selection of {sel.pool!r}; compare selections of one pool")
        def baseline(seed: int) -> list[str]:
            return list(other.ids)
        base_ids = list(other.ids)
    records = pool_records(db, sel.pool, list(dict.fromkeys(sel.ids + base_ids)), opts.data)

    def rows(ids: list[str]) -> list[dict]:
        return [records[i].fields for i in ids]
    return {"selection": lambda seed: rows(list(sel.ids)),
            "baseline": lambda seed: rows(baseline(seed))}


def _one_run(rows: list[dict], arm: str, seed: int, work: Path, opts: EvaluateOptions,
             test_rows: list[dict], tokenizer) -> dict[str, Any]:
    train = work / f"{arm}-{seed}.jsonl"
    train.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    t0 = time.perf_counter()
    adapter = finetune(opts.model, opts.gguf_file, train, work / f"{arm}-{seed}",
                       opts.settings, len(rows), seed, opts.device)
    with Adapted(opts.model, opts.gguf_file, adapter, opts.device) as lm:
        scores = answer_scores(lm, tokenizer, test_rows, opts.eval_batch,
                               opts.settings.max_length)
    return {"examples": len(rows), "epochs": opts.settings.epochs_for(len(rows)),
            "loss": scores.mean_loss, "exact_match": scores.accuracy,
            "seconds": time.perf_counter() - t0}


def _settings_key(sel, opts: EvaluateOptions, test_rows: list[dict]) -> str:
    blob = json.dumps([sel.selection_id, opts.baseline, opts.model, opts.gguf_file,
                       asdict(opts.settings), opts.eval_batch, test_rows], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
