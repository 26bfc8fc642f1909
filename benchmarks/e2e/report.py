"""Turn the benchmark's job records into ``e2e.json`` and ``e2e.md``.

    python benchmarks/e2e/run.py --stage report     # rebuilds them from the records alone

Runs at any time, also on a partial run (cells without records are left out and the
counts say so). If ``RESULTS/<name>_notes.md`` exists, its text is the "What we see"
section.

Metrics, in points of exact match (teacher-forced unless the plan says greedy):

* single skill and flooded pool: accuracy on the skill's test rows;
* mixtures: ``weighted``, the sub-skills' accuracies weighted by the target's shares, and
  ``worst``, the lowest sub-skill accuracy.

Paired differences ``gtp - arm`` are taken per (cell, seed) (a cell: target and budget),
with a 95% interval from a two-level bootstrap (cells drawn with replacement, then seeds
within each drawn cell), so that seeds of one cell do not count as independent targets.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import make_pool
import numpy as np

BOOTSTRAP = 10_000
FAMILIES = {"mix": "Mixture targets (no labels given to the selectors)",
            "flood": "Duplicate-flooded pool",
            "single": "Single-skill targets, clean pool"}
ARM_ORDER = ["gtp", "gtp-exact", "gtp-clusters", "gtp-paper", "less", "less-labels",
             "less-rr", "less-dedup", "oracle", "random"]


def load(records: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]


def shares_of(job: dict) -> dict[str, float]:
    if job["family"] == "mix":
        mix = make_pool.MIXTURES[job["target"]]
        return {s: v / sum(mix.values()) for s, v in mix.items()}
    return {job["target"]: 1.0}


def metrics(record: dict) -> dict[str, float]:
    """A selection job's metrics in points (``acc`` for one skill; ``weighted`` and
    ``worst`` for a mixture, and ``acc[<skill>]`` per sub-skill)."""
    job, scores = record["job"], record["scores"]
    if job["family"] != "mix":
        return {"acc": 100 * scores[f"test-{job['target']}"]["accuracy"],
                "loss": scores[f"test-{job['target']}"]["loss"]}
    shares = shares_of(job)
    per = {s: 100 * scores[f"mixtest-{s}"]["accuracy"] for s in shares}
    return {"weighted": sum(shares[s] * per[s] for s in shares), "worst": min(per.values()),
            **{f"acc[{s}]": v for s, v in per.items()}}


def composition(record: dict) -> dict[str, float]:
    """The selection's share of each target skill, of other skills (``other``), and the
    largest gap to the target's shares (``gap``), in points; ``unique``: distinct
    originals per pick."""
    sel, job = record["selection"], record["job"]
    shares = shares_of(job)
    n = max(1, sel["chosen"])
    got = {s: 100 * sel["skills"].get(s, 0) / n for s in shares}
    other = 100 - sum(got.values())
    gap = max(abs(got[s] - 100 * shares[s]) for s in shares)
    return {**{f"share[{s}]": v for s, v in got.items()}, "other": other, "gap": gap,
            "unique": 100 * sel.get("unique", 1 - sel["dup_share"])}


def cells_of(jobs: list[dict], family: str) -> dict[tuple, dict[str, dict[int, dict]]]:
    """(target, budget) -> arm -> seed -> metrics and composition."""
    out: dict = {}
    for r in jobs:
        job = r["job"]
        if job["kind"] != "selection" or job["family"] != family:
            continue
        out.setdefault((job["target"], job["budget"]), {}).setdefault(job["arm"], {})[
            job["seed"]] = metrics(r) | composition(r) | {"chosen": r["selection"]["chosen"]}
    return out


def bootstrap_mean(diffs: dict[tuple, list[float]], seed: int = 0) -> tuple[float, float, float]:
    """Mean over every (cell, seed) difference and a 95% two-level bootstrap interval."""
    groups = [np.asarray(v, dtype=float) for v in diffs.values() if v]
    flat = np.concatenate(groups)
    if len(groups) < 2 and len(flat) < 2:
        return float(flat.mean()), math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(BOOTSTRAP)
    for b in range(BOOTSTRAP):
        picked = [groups[i] for i in rng.integers(len(groups), size=len(groups))]
        means[b] = np.mean(np.concatenate([g[rng.integers(len(g), size=len(g))]
                                           for g in picked]))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(flat.mean()), float(lo), float(hi)


def paired(cells: dict, metric: str, a: str, b: str) -> dict | None:
    """``a - b`` on ``metric`` over every (cell, seed) both arms have."""
    diffs = {}
    for cell, arms in cells.items():
        if a in arms and b in arms:
            d = [arms[a][s][metric] - arms[b][s][metric] for s in sorted(arms[a])
                 if s in arms[b]]
            if d:
                diffs[cell] = d
    if not diffs:
        return None
    m, lo, hi = bootstrap_mean(diffs)
    return {"a": a, "b": b, "metric": metric, "cells": len(diffs),
            "pairs": sum(map(len, diffs.values())), "mean": m, "ci95": [lo, hi],
            "per_cell": {f"{t} {bud}": d for (t, bud), d in diffs.items()}}


def arm_means(cells: dict, metric: str) -> dict[str, float]:
    """Each arm's mean metric over the cells and seeds it has."""
    vals: dict[str, list[float]] = {}
    for arms in cells.values():
        for arm, seeds in arms.items():
            vals.setdefault(arm, []).extend(v[metric] for v in seeds.values())
    return {a: statistics.fmean(v) for a, v in vals.items()}


def strongest(cells: dict, metric: str,
              exclude: tuple[str, ...] = ("gtp", "gtp-exact", "gtp-clusters", "oracle"),
              ) -> str | None:
    """The best baseline by ``metric`` among arms present in every cell (the oracle, which
    reads labels, and GTP's own variants are not baselines)."""
    full = [a for a in ARM_ORDER if a not in exclude
            and all(a in arms for arms in cells.values())]
    means = arm_means(cells, metric)
    return max(full, key=lambda a: means.get(a, -math.inf), default=None)


def family_summary(jobs: list[dict], family: str) -> dict:
    cells = cells_of(jobs, family)
    main = ["weighted", "worst"] if family == "mix" else ["acc"]
    comparisons = []
    for metric in main:
        rivals = ["less"] + [x for x in [strongest(cells, metric)] if x and x != "less"]
        rivals += [x for x in ARM_ORDER if x not in rivals and x != "gtp"]
        for rival in rivals:
            p = paired(cells, metric, "gtp", rival)
            if p:
                p["strongest"] = rival == strongest(cells, metric)
                comparisons.append(p)
    return {"cells": {f"{t}|{b}": {arm: {str(s): v for s, v in seeds.items()}
                                   for arm, seeds in arms.items()}
                      for (t, b), arms in sorted(cells.items())},
            "paired": comparisons, "strongest": {m: strongest(cells, m) for m in main}}


def fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values)
    if len(values) < 2 or statistics.stdev(values) == 0:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _seeds(cell_arm: dict, key: str) -> list[float]:
    return [v[key] for v in cell_arm.values() if key in v]


def _table(family: str, block: dict) -> list[str]:
    """One table per family: a row per (target, budget, arm)."""
    if family == "mix":
        head = "| target | budget | arm | n | weighted | worst | per sub-skill | composition " \
               "(target's shares) | gap |"
    else:
        head = "| target | budget | arm | n | acc % | skill % | unique % |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for cell, arms in block["cells"].items():
        target, budget = cell.split("|")
        order = sorted(arms, key=lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else 99)
        for arm in order:
            seeds = arms[arm]
            n = fmt(_seeds(seeds, "chosen"), 0)
            if family == "mix":
                shares = shares_of({"family": "mix", "target": target})
                per = ", ".join(f"{s} {fmt(_seeds(seeds, f'acc[{s}]'))}" for s in shares)
                comp = "/".join(f"{statistics.fmean(_seeds(seeds, f'share[{s}]')):.0f}"
                                for s in shares)
                comp += f" +{statistics.fmean(_seeds(seeds, 'other')):.0f} other (" + "/".join(
                    f"{100 * v:.0f}" for v in shares.values()) + ")"
                lines.append(f"| {target} | {budget} | {arm} | {n} | "
                             f"{fmt(_seeds(seeds, 'weighted'))} | {fmt(_seeds(seeds, 'worst'))} "
                             f"| {per} | {comp} | {fmt(_seeds(seeds, 'gap'), 0)} |")
            else:
                skill = fmt(_seeds(seeds, f"share[{target}]"), 0)
                lines.append(f"| {target} | {budget} | {arm} | {n} | "
                             f"{fmt(_seeds(seeds, 'acc'))} | {skill} | "
                             f"{fmt(_seeds(seeds, 'unique'), 0)} |")
    return lines


def _paired_lines(block: dict) -> list[str]:
    lines = ["| metric | gtp − | cells | pairs | mean | 95% interval |",
             "|---|---|---|---|---|---|"]
    for p in block["paired"]:
        lo, hi = p["ci95"]
        mark = " (strongest baseline)" if p.get("strongest") else ""
        lines.append(f"| {p['metric']} | {p['b']}{mark} | {p['cells']} | {p['pairs']} | "
                     f"**{p['mean']:+.1f}** | [{lo:+.1f}, {hi:+.1f}] |")
    return lines


def _find(block: dict | None, metric: str, b: str) -> dict | None:
    for p in (block or {}).get("paired", []):
        if p["metric"] == metric and p["b"] == b:
            return p
    return None


def criteria(summary: dict) -> list[str]:
    """The issue's bars, each checked on the records: met, not met, or not measured."""
    def check(label: str, p: dict | None, bar, how: str) -> str:
        if p is None:
            return f"- {label}: not measured yet"
        lo, hi = p["ci95"]
        if math.isnan(lo):
            return (f"- {label}: not decided — {p['mean']:+.1f} points over {p['pairs']} "
                    "pair(s), too few for an interval")
        ok = bar(p["mean"], lo)
        return (f"- {label}: **{'met' if ok else 'not met'}** — {p['mean']:+.1f} points "
                f"[{lo:+.1f}, {hi:+.1f}], {p['pairs']} pairs ({how})")

    mix, flood, single = (summary.get(f) for f in ("mix", "flood", "single"))
    out = [check("Mixtures, worst sub-skill: GTP ≥ LESS + 5 with the interval above 0",
                 _find(mix, "worst", "less"), lambda m, lo: m >= 5 and lo > 0, "gtp − less"),
           check("Mixtures, worst sub-skill: GTP ≥ label-free round-robin",
                 _find(mix, "worst", "less-rr"), lambda m, lo: m >= 0, "gtp − less-rr"),
           check("Flooded pool: GTP ≥ LESS with near-duplicate filtering",
                 _find(flood, "acc", "less-dedup"), lambda m, lo: m >= 0, "gtp − less-dedup"),
           check("Single skill: GTP non-inferior to LESS (mean ≥ 0, interval low ≥ −2)",
                 _find(single, "acc", "less"), lambda m, lo: m >= 0 and lo >= -2,
                 "gtp − less")]
    if mix:
        gaps = [v["gap"] for arms in mix["cells"].values() for v in arms.get("gtp", {}).values()]
        if gaps:
            out.append(f"- Mixtures: GTP's composition within ±15 points of the target's "
                       f"shares: **{'met' if max(gaps) <= 15 else 'not met'}** — largest gap "
                       f"{max(gaps):.0f} points, mean {statistics.fmean(gaps):.0f}")
    if flood:
        uniq = [v["unique"] for arms in flood["cells"].values()
                for v in arms.get("gtp", {}).values()]
        if uniq:
            out.append(f"- Flooded pool: ≥ 95% of GTP's picks unique originals: "
                       f"**{'met' if min(uniq) >= 95 else 'not met'}** — lowest "
                       f"{min(uniq):.0f}%, mean {statistics.fmean(uniq):.0f}%")
    return out


def _setup_lines(plan: dict, timing: dict, jobs: list[dict], command: str, env: dict) -> list:
    sel_jobs = [j for j in jobs if j["job"]["kind"] == "selection"]
    ran = [j for j in sel_jobs if not j.get("reused_from")]
    passes: dict[str, set[int]] = {}  # budget -> example passes its fine-tunes ran
    for j in sel_jobs:
        if j.get("train"):
            passes.setdefault(j["job"]["budget"], set()).add(
                j["train"]["examples"] * j["train"]["epochs"])
    passes_ran = ", ".join(f"{'/'.join(map(str, sorted(v)))} at {b}"
                           for b, v in passes.items())
    train_s = sum(j.get("train_seconds", 0) for j in jobs)
    eval_s = sum(j.get("eval_seconds", 0) for j in jobs)
    envs = {j["environment"]["hash"] for j in jobs if j.get("environment")}
    pipeline = sum(timing.values()) / 60
    return [
        "# End-to-end selection quality (SmolLM2-135M-Instruct, LoRA)", "",
        f"`{command}`", "",
        f"{env.get('machine', '?')}; python {env.get('python')}, torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}, peft {env.get('peft')}, gradstore "
        f"{env.get('gradstore')} ({env.get('commit')}); model `{Path(plan['model']).name}"
        f"{'/' + plan['gguf_file'] if plan.get('gguf_file') else ''}`, device {plan['device']}."
        + (f" **Records from {len(envs)} environments.**" if len(envs) > 1 else ""), "",
        "## Set-up", "",
        f"- **Pools**: the clean pool, {plan['pool_size']} rows of 8 exact-match skills "
        f"({100 * plan['dup_share']:.0f}% planted re-worded near-duplicates); the flooded "
        f"pool, {plan['flood_size']} rows of which ≥ {100 * plan['flood_share']:.0f}% are "
        "copies in families of 5–50 (half exact, half re-worded). Targets: "
        f"{plan['target_size']} rows each; "
        f"scored on {plan.get('single_test_rows', plan['test_size'])} held-out rows of the "
        f"skill ({plan['mix_test_per_skill']} per sub-skill for mixtures), disjoint from the "
        "pools (`benchmarks/e2e/make_pool.py`).",
        f"- **Scenarios**: mixtures {', '.join(plan['mixtures'])} at "
        f"{', '.join(plan['mix_budgets'])} ({', '.join(plan['mix_arms'])}; "
        + ", ".join(f"{a} at {b}" for a, b in plan["mix_extra"]) + "); flooded pool, "
        f"targets {', '.join(plan['flood_targets'])} at {', '.join(plan['flood_budgets'])} "
        f"({', '.join(plan['flood_arms'])}); single skills {', '.join(plan['single_targets'])} "
        f"at {', '.join(plan['single_budgets'])} ({', '.join(plan['single_arms'])}).",
        f"- **gradstore through its CLI, defaults**: warm-up on "
        f"{100 * plan['warmup_fraction']:.0f}% of the clean pool ({plan['warmup_epochs']} "
        f"epochs, LoRA {plan['warmup_layers'] or 'all layers'}), Adam gradients for pools, "
        f"Adam and SGD for targets, d={plan['proj_dim']}; the flooded pool is ingested on the "
        "same checkpoints. Baselines without a gradstore method (`less-rr`, `less-dedup` at "
        f"cosine {plan['dedup_cosine']}, `oracle`) are in `benchmarks/e2e/baselines.py`.",
        f"- **Fine-tunes**: LoRA r=8 on {plan['lora_layers'] or 'all layers'}, lr "
        f"{plan['lr']}, batch {plan['batch_size']}, {plan['passes']} example passes asked, "
        f"run in whole epochs (round({plan['passes']} / k) epochs of a k-row selection): "
        f"{passes_ran}; seeds {plan['seeds']} change the LoRA initialisation, the data order and "
        f"the random draw. Exact match: {plan['exact_match']}.", "",
        f"Jobs recorded: {len(sel_jobs)} selection fine-tunes ({len(ran)} trained, the rest "
        f"identical to one of them). Time: pipeline {pipeline:.1f} min, training "
        f"{train_s / 60:.1f} min, evaluation {eval_s / 60:.1f} min.", ""]


def markdown(plan: dict, timing: dict, jobs: list[dict], summary: dict, command: str,
             env: dict, notes: str | None) -> str:
    lines = _setup_lines(plan, timing, jobs, command, env)
    if notes:
        lines += ["## What we see", "", notes.strip(), ""]
    lines += ["## The bars of issue 23", "", *criteria(summary), ""]
    base = next((j for j in jobs if j["job"]["kind"] == "base"), None)
    if base:
        lines += ["Untrained model: " + ", ".join(
            f"{k} {100 * v['accuracy']:.1f}" for k, v in base["scores"].items()), ""]
    for family, title in FAMILIES.items():
        block = summary.get(family)
        if not block or not block["cells"]:
            continue
        lines += [f"## {title}", "", "Paired differences (points of exact match):", "",
                  *_paired_lines(block), "", *_table(family, block), ""]
    return "\n".join(lines) + "\n"


def write(plan: dict, timing: dict, records: Path, results: Path, name: str, command: str,
          env: dict) -> None:
    jobs = load(records)
    summary = {f: family_summary(jobs, f) for f in FAMILIES}
    results.mkdir(parents=True, exist_ok=True)
    notes_file = results / f"{name}_notes.md"
    notes = notes_file.read_text() if notes_file.exists() else None
    payload = {"command": command, "environment": env, "plan": plan,
               "pipeline_seconds": timing, "summary": summary}
    (results / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (results / f"{name}.md").write_text(
        markdown(plan, timing, jobs, summary, command, env, notes))
