"""Turn the benchmark's job records into ``e2e.json``, ``e2e.md`` and ``e2e.png``.

    python benchmarks/e2e/run.py --stage report     # rebuilds them from the records alone

Runs at any time, also on a partial run (missing cells are marked). If
``RESULTS/<name>_notes.md`` exists, its text is the "What we see" section.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

METHOD_ORDER = ["gtp", "gtp-exact", "less", "random", "gtp-paper", "gtp-paper+w", "omp"]
COLORS = dict(zip(METHOD_ORDER, ["tab:blue", "tab:olive", "tab:orange", "tab:red", "tab:cyan",
                                 "tab:purple", "tab:green"], strict=True))


def mean_std(values: list[float]) -> tuple[float, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, None
    if len(values) == 1:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values)


def fmt(values: list[float], digits: int = 3, pct: bool = False) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "–"
    scale = 100 if pct else 1
    d = 1 if pct else digits
    text = f"{m * scale:.{d}f}"
    return text if not s else f"{text} ± {s * scale:.{d}f}"  # same in every seed: no ±


def load(records: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]


def eval_set(scenario: str) -> str:
    return "mixed" if scenario == "indomain" else f"test-{scenario}"


def _order(plan: dict, method: str, budget: str) -> tuple[int, int]:
    budgets = plan["budgets"]
    return (budgets.index(budget) if budget in budgets else 99,
            METHOD_ORDER.index(method) if method in METHOD_ORDER else 99)


def summarise(plan: dict, jobs: list[dict]) -> dict:
    """Rows per scenario: (method, budget) -> lists over seeds, plus the references."""
    out: dict = {}
    refs: dict[str, list[dict]] = {}
    for j in jobs:
        if j["job"]["kind"] in ("base", "full"):
            refs.setdefault(j["job"]["kind"], []).append(j)
    for sc in [*plan["targets"], "indomain"]:
        es = eval_set(sc)
        rows: dict[tuple[str, str], dict] = {}
        for j in jobs:
            job = j["job"]
            if (job["kind"] != "selection" or es not in j["scores"] or job.get("steps_like_full")
                    or job["scenario"] not in (sc, "any")):
                continue
            cell = rows.setdefault((job["method"], job["budget"]), {
                "accuracy": [], "loss": [], "chosen": [], "target_share": [], "dup_share": [],
                "seconds": [], "seeds": []})
            sel = j["selection"]
            cell["accuracy"].append(j["scores"][es]["accuracy"])
            cell["loss"].append(j["scores"][es]["loss"])
            cell["chosen"].append(sel["chosen"])
            cell["dup_share"].append(sel["dup_share"])
            cell["seconds"].append(sel["seconds"])
            cell["seeds"].append(job["seed"])
            if sc != "indomain":
                cell["target_share"].append(sel["skills"].get(sc, 0) / max(1, sel["chosen"]))
        ordered = sorted(rows.items(), key=lambda kv: _order(plan, *kv[0]))
        out[sc] = {
            "eval_set": es,
            "rows": [{"method": m, "budget": b, **cell} for (m, b), cell in ordered],
            "references": {kind: {"accuracy": [r["scores"][es]["accuracy"] for r in rs],
                                  "loss": [r["scores"][es]["loss"] for r in rs]}
                           for kind, rs in refs.items() if es in rs[0]["scores"]},
        }
    return out


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a two-sided t interval (scipy's t quantile)."""
    from scipy.stats import t

    n = len(values)
    m = statistics.fmean(values)
    if n < 2:
        return m, math.nan, math.nan
    half = t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return m, m - half, m + half


def paired(plan: dict, jobs: list[dict], a: str = "gtp", b: str = "less") -> dict:
    """``a - b`` in points of exact match per (target, budget, seed), their mean with a 95%
    interval, and per (target, budget) the mean difference against its seed spread."""
    acc: dict[tuple, float] = {}
    for j in jobs:
        job = j["job"]
        if (job["kind"] == "selection" and not job.get("steps_like_full")
                and job["scenario"] in plan["targets"] and job["method"] in (a, b)):
            es = eval_set(job["scenario"])
            acc[(job["method"], job["scenario"], job["budget"], job["seed"])] = \
                100 * j["scores"][es]["accuracy"]
    diffs, cells = [], []
    for t in plan["targets"]:
        for bud in plan["budgets"]:
            d = [acc[(a, t, bud, s)] - acc[(b, t, bud, s)] for s in plan["seeds"]
                 if (a, t, bud, s) in acc and (b, t, bud, s) in acc]
            if not d:
                continue
            diffs += d
            m, sd = mean_std(d)
            cells.append({"target": t, "budget": bud, "diffs": d, "mean": m,
                          "seed_spread": sd, "worse_beyond_spread":
                          bool(sd is not None and m < -sd) or (sd is None and m < 0)})
    if not diffs:
        return {"a": a, "b": b, "n": 0, "cells": []}
    m, lo, hi = t_interval(diffs)
    return {"a": a, "b": b, "n": len(diffs), "mean": m, "ci95": [lo, hi], "cells": cells}


def duplicates(summary: dict, plan: dict) -> dict:
    """Mean share of planted near-duplicates per method and budget over the target skills."""
    out: dict = {}
    for sc in plan["targets"]:
        for r in summary[sc]["rows"]:
            out.setdefault(r["method"], {}).setdefault(r["budget"], []).extend(r["dup_share"])
    return {m: {b: statistics.fmean(v) for b, v in bs.items()} for m, bs in out.items()}


def convergence(plan: dict, jobs: list[dict]) -> list[dict]:
    """The convergence arm: accuracy after as many optimizer steps as the full pool, and its
    share of that seed's full-pool accuracy."""
    full = {j["job"]["seed"]: j for j in jobs if j["job"]["kind"] == "full"}
    rows = []
    for j in jobs:
        job = j["job"]
        if not job.get("steps_like_full"):
            continue
        es = eval_set(job["scenario"])
        ref = full.get(job["seed"])
        full_acc = ref["scores"][es]["accuracy"] if ref else math.nan
        acc = j["scores"][es]["accuracy"]
        rows.append({"target": job["scenario"], "method": job["method"], "budget": job["budget"],
                     "seed": job["seed"], "steps": j["train"].get("steps"),
                     "accuracy": acc, "loss": j["scores"][es]["loss"],
                     "full_pool_accuracy": full_acc,
                     "share_of_full": acc / full_acc if full_acc else math.nan})
    return sorted(rows, key=lambda r: (r["target"], r["budget"], r["method"]))


def _setup_lines(plan: dict, timing: dict, jobs: list[dict], command: str, env: dict) -> list:
    n_sel = sum(j["job"]["kind"] == "selection" for j in jobs)
    train_s = sum(j.get("train_seconds", 0) for j in jobs)
    eval_s = sum(j.get("eval_seconds", 0) for j in jobs)
    envs = {j["environment"]["hash"]: j["environment"] for j in jobs if j.get("environment")}
    unknown = sum(not j.get("environment") for j in jobs)
    mixed = [] if len(envs) + (unknown > 0) <= 1 else [
        f"**Records from {len(envs) + (unknown > 0)} environments** (" + "; ".join(
            f"{sum(j.get('environment', {}).get('hash') == h for j in jobs)} jobs with "
            f"torch {e.get('torch')}, transformers {e.get('transformers')}, peft {e.get('peft')}"
            for h, e in envs.items()) + (f"; {unknown} recorded before environments were"
                                         if unknown else "") + "): compare within one.", ""]
    return [
        "# End-to-end selection quality (SmolLM2-135M-Instruct, LoRA)", "",
        f"`{command}`", "", *mixed,
        f"{env.get('machine', '?')}; python {env.get('python')}, torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}, peft {env.get('peft')}, gradstore "
        f"{env.get('gradstore')} ({env.get('commit')}); model `{Path(plan['model']).name}"
        f"{'/' + plan['gguf_file'] if plan.get('gguf_file') else ''}`, device {plan['device']}.",
        "", "## Set-up", "",
        f"- **Pool**: {plan['pool_size']} examples of 8 exact-match skills "
        f"(`benchmarks/e2e/make_pool.py`), {plan['dup_share']:.0%} of them planted "
        f"near-duplicates (an earlier example re-worded, same answer). Targets: "
        f"{', '.join(plan['targets'])}, each with a target set of {plan['target_size']} and a "
        f"test set of {plan['test_size']}, disjoint from the pool. In-domain runs are scored on "
        f"a mixed test set of {plan['mixed_per_skill']} test examples per skill.",
        f"- **gradstore, through its CLI, with its defaults**: `gradstore run` warm-up on "
        f"{plan['warmup_fraction']:.0%} of the pool ({plan['warmup_epochs']} epochs, lr "
        f"{plan['warmup_lr']}, LoRA {plan['warmup_layers'] or 'all layers'}), Adam gradients "
        f"for the pool, Adam and SGD for each target, projected to d={plan['proj_dim']}; then "
        "`gradstore select --format json` per method for each target and in-domain: "
        f"{', '.join(plan['methods'])} at {', '.join(plan['budgets'])}; "
        f"{', '.join(plan['one_budget_methods'])} at {plan['one_budget']}. `gtp` is the "
        "default (the selection's mean trajectory matches the target's to within the target "
        "mean's standard error, then turns to the examples most aligned with it), "
        "`gtp-exact` the same with `--tolerance 0` (the mean matched as closely as possible), "
        "`gtp-paper` GTP as published, `+w` trains on the selection with its weights as loss "
        "weights.",
        f"- **Fine-tunes**: LoRA r=8 on {plan['lora_layers'] or 'all layers'}, lr {plan['lr']}, "
        f"batch {plan['batch_size']}, linear decay, gradstore's own trainer; every selection "
        f"gets the same {plan['passes']} example passes (epochs = {plan['passes']} / selection "
        f"size, rounded). Seeds {plan['seeds']} change the LoRA initialisation, the data order "
        "and the random baseline's draw; the warm-up, store and the deterministic selections "
        "are shared. Full pool: one epoch over all of it per seed "
        f"({plan.get('full_pool_steps')} optimizer steps). Convergence arm: "
        f"{', '.join(plan['convergence_methods'])} at {', '.join(plan['convergence_budgets'])} "
        f"on {', '.join(plan['convergence_targets']) or '–'} (seed {plan['convergence_seed']}), "
        "trained for the full pool's number of optimizer steps.",
        "- **Metrics**: `acc` exact-match accuracy of batched greedy decoding; `loss` mean "
        "teacher-forced cross-entropy on the answer tokens; `skill` share of the selection from "
        "the target skill; `dups` share of the selection spent on a near-duplicate of an "
        "example already selected ((chosen − distinct originals) / chosen); `sel s` selection "
        "seconds; `n` examples chosen. Mean ± sample std over seeds.", "",
        f"Time: warm-up + ingest {timing.get('warmup_and_ingest', math.nan) / 60:.1f} min, "
        f"{n_sel} selection fine-tunes + references: training {train_s / 60:.1f} min, "
        f"evaluation {eval_s / 60:.1f} min (jobs reusing an identical run count 0).", "",
    ]


def _paired_lines(pc: dict) -> list[str]:
    if not pc["n"]:
        return []
    lo, hi = pc["ci95"]
    lines = [f"## Paired comparison: {pc['a']} − {pc['b']}", "",
             f"Exact-match points, per (target, budget, seed): mean **{pc['mean']:+.2f}**, 95% "
             f"interval [{lo:+.2f}, {hi:+.2f}] over {pc['n']} pairs.", "",
             "| target | budget | differences per seed | mean | seed spread | worse beyond "
             "spread |", "|---|---|---|---|---|---|"]
    for c in pc["cells"]:
        spread = "–" if c["seed_spread"] is None else f"{c['seed_spread']:.1f}"
        lines.append(f"| {c['target']} | {c['budget']} | "
                     f"{', '.join(f'{d:+.1f}' for d in c['diffs'])} | {c['mean']:+.1f} | "
                     f"{spread} | {'yes' if c['worse_beyond_spread'] else 'no'} |")
    return lines + [""]


def markdown(plan: dict, timing: dict, jobs: list[dict], summary: dict, command: str,
             env: dict, notes: str | None) -> str:
    lines = _setup_lines(plan, timing, jobs, command, env)
    if notes:
        lines += ["## What we see", "", notes.strip(), ""]
    lines += _paired_lines(paired(plan, jobs))
    dups = duplicates(summary, plan)
    if dups:
        lines += ["## Planted near-duplicates in the selections (mean over targets)", "",
                  "| method | " + " | ".join(plan["budgets"]) + " |",
                  "|---|" + "---|" * len(plan["budgets"])]
        for m in [m for m in METHOD_ORDER if m in dups]:
            cells = [f"{100 * dups[m][b]:.1f}%" if b in dups[m] else "–" for b in plan["budgets"]]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    conv = convergence(plan, jobs)
    if conv:
        lines += ["## Convergence arm: selections trained as long as the full pool", "",
                  "| target | budget | method | steps | acc % | full pool acc % | share of full |",
                  "|---|---|---|---|---|---|---|"]
        for r in conv:
            lines.append(f"| {r['target']} | {r['budget']} | {r['method']} | {r['steps']} | "
                         f"{100 * r['accuracy']:.1f} | {100 * r['full_pool_accuracy']:.1f} | "
                         f"{100 * r['share_of_full']:.0f}% |")
        lines.append("")
    for sc, block in summary.items():
        title = ("In-domain selection (no target), mixed test set" if sc == "indomain"
                 else f"Target skill `{sc}` (test set `{block['eval_set']}`)")
        lines += [f"## {title}", ""]
        refs = block["references"]
        for kind, label in (("base", "untrained model"), ("full", "full pool, 1 epoch")):
            if kind in refs:
                lines.append(f"- {label}: acc {fmt(refs[kind]['accuracy'], pct=True)}%, "
                             f"loss {fmt(refs[kind]['loss'])}")
        lines += ["", "| budget | method | n | skill | dups | sel s | loss | acc % |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in block["rows"]:
            skill = fmt(r["target_share"], pct=True) if sc != "indomain" else "–"
            lines.append(
                f"| {r['budget']} | {r['method']} | {fmt(r['chosen'], 0)} | {skill} | "
                f"{fmt(r['dup_share'], pct=True)} | {fmt(r['seconds'], 2)} | "
                f"{fmt(r['loss'])} | {fmt(r['accuracy'], pct=True)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(plan: dict, summary: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed; no plot (pip install '.[bench]')")
        return False
    scenarios = list(summary)
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.6 * len(scenarios), 3.4),
                             squeeze=False)
    budgets = plan["budgets"]
    for ax, sc in zip(axes[0], scenarios, strict=True):
        block = summary[sc]
        for method in METHOD_ORDER:
            xs, ys, es = [], [], []
            for r in block["rows"]:
                if r["method"] == method and r["budget"] in budgets:
                    m, s = mean_std(r["accuracy"])
                    xs.append(budgets.index(r["budget"]))
                    ys.append(100 * m)
                    es.append(100 * (s or 0))
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o" if len(xs) > 1 else "s", capsize=3,
                            label=method, color=COLORS[method], ls="-" if len(xs) > 1 else "")
        refs = block["references"]
        if "full" in refs:
            ax.axhline(100 * mean_std(refs["full"]["accuracy"])[0], color="black", ls="--",
                       lw=1, label="full pool")
        if "base" in refs:
            ax.axhline(100 * mean_std(refs["base"]["accuracy"])[0], color="grey", ls=":",
                       lw=1, label="untrained")
        ax.set_xticks(range(len(budgets)), budgets)
        ax.set_xlabel("budget (share of the pool)")
        ax.set_title("in-domain (mixed test)" if sc == "indomain" else f"target: {sc}")
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("exact-match accuracy (%)")
    handles: dict = {}
    for ax in axes[0]:  # one legend for every panel's methods
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(plan: dict, timing: dict, records: Path, results: Path, name: str, command: str,
          env: dict) -> None:
    jobs = load(records)
    summary = summarise(plan, jobs)
    results.mkdir(parents=True, exist_ok=True)
    notes_file = results / f"{name}_notes.md"
    notes = notes_file.read_text() if notes_file.exists() else None
    payload = {"command": command, "environment": env, "plan": plan,
               "pipeline_seconds": timing, "summary": summary,
               "paired": paired(plan, jobs), "duplicates": duplicates(summary, plan),
               "convergence": convergence(plan, jobs)}
    (results / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (results / f"{name}.md").write_text(
        markdown(plan, timing, jobs, summary, command, env, notes))
    plot(plan, summary, results / f"{name}.png")
