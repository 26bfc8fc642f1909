"""The report of the reasoning-gym plan (``run.py --suite rg``): every arm against default
GTP, paired by cell, per family, with intervals that are honest at a few dozen cells.

A **cell** is one (target, budget) of a family; its value for an arm is the mean over the
seeds it ran (one seed to start: the spread between cells dominates). For each family and
arm, the paired differences ``arm - gtp`` over the cells where both ran give a mean and a
95% t-interval (``mean +- t(0.975, n-1) * sd / sqrt(n)``): with n cells the cell means are
what varies, and a t-interval over them does not pretend that the seeds inside a cell
are independent evidence (a percentile bootstrap over so few cells is too narrow).

Metrics, in points of teacher-forced exact match (``em``), and answer-token loss in nats
(``loss``, lower is better):

* single task and flooded pool: the task's test rows;
* mixture: ``weighted``, each part's exact match weighted by the target's own shares (the
  headline: the target served as given), ``worst``, the smallest part's (a guard: no arm
  may leave a part untrained), and ``loss`` weighted by the shares.

    python benchmarks/e2e/rg_report.py RESULTS/e2e_rg_jobs    # print the tables
    python benchmarks/e2e/rg_report.py --composition WORK-rg RESULTS/e2e_rg.json
                                        # the mixture selections' composition, no fine-tune
    python benchmarks/e2e/rg_report.py --pooled RESULTS/e2e_rg_jobs RESULTS/e2e_rg12_jobs \
        [RESULTS/e2e_rg_pooled.md]      # several plans' cells as one set
    python benchmarks/e2e/rg_report.py --rerun RESULTS/e2e_rg12_jobs OTHER/e2e_rg12_jobs
                                        # a second run of a plan against the first
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from gradstore.budget import parse_budget

FAMILIES = {"mix": "Mixtures of 2-3 tasks (unequal shares, no labels given)",
            "single": "Single tasks", "flood": "Duplicate-flooded pool"}
HEADLINE = {"mix": ("weighted", "worst", "loss"), "single": ("em", "loss"),
            "flood": ("em", "loss", "unique")}
REFERENCE = "gtp"


def load(records: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]


def shares_of(job: dict, plan: dict) -> dict[str, float]:
    if job["family"] != "mix":
        return {job["target"]: 1.0}
    mix = plan["mixture_specs"][job["target"]]
    return {s: v / sum(mix.values()) for s, v in mix.items()}


def metrics(record: dict, plan: dict) -> dict[str, float]:
    """One selection job's metrics (see the module's docstring), and ``parts_empty``: the
    target's parts the selection holds no row of."""
    job, scores, sel = record["job"], record["scores"], record["selection"]
    n = max(1, sel["chosen"])
    out = {"unique": 100 * sel.get("unique", 1.0)}
    if job["family"] != "mix":
        s = scores[f"test-{job['target']}"]
        return out | {"em": 100 * s["accuracy"], "loss": s["loss"],
                      "on_task": 100 * sel["skills"].get(job["target"], 0) / n}
    shares = shares_of(job, plan)
    em = {t: 100 * scores[f"mixtest-{t}"]["accuracy"] for t in shares}
    return out | {
        "weighted": sum(shares[t] * em[t] for t in shares), "worst": min(em.values()),
        "loss": sum(shares[t] * scores[f"mixtest-{t}"]["loss"] for t in shares),
        "parts_empty": float(sum(sel["skills"].get(t, 0) == 0 for t in shares)),
        **{f"share[{t}]": 100 * sel["skills"].get(t, 0) / n for t in shares}}


def cells_of(jobs: list[dict], family: str, plan: dict) -> dict[tuple, dict[str, dict]]:
    """(target, budget) -> arm -> metrics averaged over the seeds that ran."""
    runs: dict = {}
    for r in jobs:
        job = r["job"]
        if job["kind"] == "selection" and job["family"] == family:
            runs.setdefault((job["target"], job["budget"]), {}).setdefault(
                job["arm"], []).append(metrics(r, plan))
    return {cell: {arm: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
                   for arm, ms in arms.items()} for cell, arms in runs.items()}


def t_interval(diffs: list[float]) -> dict:
    """Mean of paired differences with a 95% t-interval over them (``n`` cells)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    n, mean = len(d), float(d.mean())
    if n < 2:
        return {"n": n, "mean": mean, "lo": math.nan, "hi": math.nan}
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half}


def paired(cells: dict, metric: str, arm: str) -> dict | None:
    diffs = [c[arm][metric] - c[REFERENCE][metric] for c in cells.values()
             if arm in c and REFERENCE in c and metric in c[arm]]
    return t_interval(diffs) if diffs else None


def summary(jobs: list[dict], plan: dict) -> dict:
    return pooled_summary([("", jobs, plan)])


def pooled_summary(sources: list[tuple[str, list[dict], dict]]) -> dict:
    """Per family: the cells of every (name, jobs, plan) source together (a cell's target
    prefixed with its source's name where there is one), each arm's means and its paired
    differences to default GTP over them."""
    out = {}
    for family in FAMILIES:
        cells = {(f"{name}:{t}" if name else t, b): v for name, jobs, plan in sources
                 for (t, b), v in cells_of(jobs, family, plan).items()}
        if not cells:
            continue
        arms = list(dict.fromkeys(a for c in cells.values() for a in c))
        means = {a: {m: float(np.mean([c[a][m] for c in cells.values() if a in c]))
                     for m in HEADLINE[family]} | {"cells": sum(a in c for c in cells.values())}
                 for a in arms}
        diffs = {a: {m: paired(cells, m, a) for m in HEADLINE[family]}
                 for a in arms if a != REFERENCE}
        out[family] = {"cells": {f"{t}@{b}": v for (t, b), v in cells.items()},
                       "means": means, "paired": diffs}
    return out


def plan_of(records: Path) -> dict:
    """The plan a folder of job records ran (``NAME_jobs`` -> ``NAME.json``'s)."""
    return json.loads((records.parent / f"{records.name.removesuffix('_jobs')}.json")
                      .read_text())["plan"]


def pooled_report(folders: list[Path]) -> str:
    """Every plan's cells together: the same tables over all of them (``--pooled``)."""
    sources = [(f.name.removesuffix("_jobs").removeprefix("e2e_"), load(f), plan_of(f))
               for f in folders]
    summ = pooled_summary(sources)
    command = "python benchmarks/e2e/rg_report.py --pooled " + " ".join(
        f"benchmarks/results/{f.name}" for f in folders)
    return "\n".join([
        "# Every reasoning-gym plan's cells together", "", f"`{command}`", "",
        "Each plan's cells (" + ", ".join(
            f"{name}: {sum(len(cells_of(jobs, f, plan)) for f in FAMILIES)}"
            for name, jobs, plan in sources)
        + ") as one set: a cell is one target at one budget in one plan's pool. The plans "
        "differ in pool, tasks and arms, so an arm's row counts the cells it ran.", "",
        *tables(summ), *composition_lines(summ), *budget_lines(summ)]) + "\n"


def job_seconds(jobs: list[dict]) -> float:
    """The jobs' fine-tune and scoring seconds (a job reused from another's record: none)."""
    return sum(j.get("train_seconds", 0) + j.get("eval_seconds", 0) for j in jobs)


def _ci(p: dict | None, digits: int = 1) -> str:
    if p is None:
        return "-"
    if math.isnan(p["lo"]):
        return f"{p['mean']:+.{digits}f} (n={p['n']})"
    return f"{p['mean']:+.{digits}f} [{p['lo']:+.{digits}f}, {p['hi']:+.{digits}f}] (n={p['n']})"


def tables(summ: dict) -> list[str]:
    lines = []
    for family, title in FAMILIES.items():
        block = summ.get(family)
        if not block:
            continue
        ms = HEADLINE[family]
        lines += [f"## {title}", "", f"{len(block['cells'])} cells. Arm means over the cells "
                  "each arm ran (exact match in points; loss in nats, lower is better), then "
                  f"each arm minus default `{REFERENCE}`, paired by cell, with a 95% t-interval "
                  "over the cells both ran (too few cells for an interval to mean much below "
                  "about 10):", "",
                  "| arm | cells | " + " | ".join(ms) + " | " +
                  " | ".join(f"{m} - gtp" for m in ms) + " |",
                  "|---|---|" + "---|" * (2 * len(ms))]
        for arm, mean in block["means"].items():
            diff = block["paired"].get(arm, {})
            lines.append(f"| {arm} | {mean['cells']} | "
                         + " | ".join(f"{mean[m]:.2f}" if m == "loss" else f"{mean[m]:.1f}"
                                      for m in ms) + " | "
                         + " | ".join(_ci(diff.get(m), 2 if m == "loss" else 1)
                                      for m in ms) + " |")
        lines.append("")
    return lines


def budget_lines(summ: dict) -> list[str]:
    """Each family's exact-match headline again, budget by budget: every arm minus default
    GTP over the cells of that budget (which method for a small or a large budget)."""
    lines = []
    for family, title in FAMILIES.items():
        block = summ.get(family)
        if not block:
            continue
        metric = HEADLINE[family][0]
        by_budget: dict[str, dict] = {}
        for key, cell in block["cells"].items():
            by_budget.setdefault(key.rsplit("@", 1)[1], {})[key] = cell
        rows = []
        for budget, cells in sorted(by_budget.items(), key=lambda kv: parse_budget(kv[0])):
            for arm in block["means"]:
                p = paired(cells, metric, arm) if arm != REFERENCE else None
                mine = [c[arm][metric] for c in cells.values() if arm in c]
                if mine and (p or arm == REFERENCE):
                    rows.append(f"| {budget} | {arm} | {len(mine)} | {np.mean(mine):.1f} | "
                                f"{_ci(p) if p else '-'} |")
        if rows:
            lines += [f"### {title}, by budget ({metric})", "",
                      f"| budget | arm | cells | {metric} | {metric} - gtp |",
                      "|---|---|---|---|---|", *rows, ""]
    return lines


def figure(summ: dict, path: Path) -> bool:
    """Every arm's paired difference to default GTP with its interval, one panel per
    family's exact-match headline (False when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [(f, m) for f in FAMILIES if f in summ
              for m in HEADLINE[f] if m not in ("loss", "unique")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (family, metric) in zip(axes[0], panels, strict=True):
        rows = [(a, d[metric]) for a, d in summ[family]["paired"].items() if d.get(metric)]
        for y, (_, p) in enumerate(rows):
            lo, hi = (p["lo"], p["hi"]) if not math.isnan(p["lo"]) else (p["mean"],) * 2
            ax.errorbar(p["mean"], y, xerr=[[p["mean"] - lo], [hi - p["mean"]]], fmt="o",
                        color="tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray",
                        capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [a for a, _ in rows])
        ax.set_title(f"{family}: {metric} (n={len(summ[family]['cells'])})", fontsize=10)
        ax.set_xlabel("arm - gtp, points (95% t-interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def setup_lines(plan: dict, timing: dict, jobs: list[dict], command: str, env: dict,
                ) -> list[str]:
    sel = [j for j in jobs if j["job"]["kind"] == "selection"]
    trained = [j for j in sel if not j.get("reused_from")]
    base = next((j for j in jobs if j["job"]["kind"] == "base"), None)
    mixes = "; ".join(f"{m} = " + "/".join(f"{t} {v:g}" for t, v in spec.items())
                      for m, spec in plan["mixture_specs"].items())
    alone = "single-task and flooded" if plan["flood_targets"] else "single-task"
    lines = [f"`{command}`", "",
             f"{env.get('machine')}; python {env.get('python')}, torch {env.get('torch')}, "
             f"transformers {env.get('transformers')}, peft {env.get('peft')}, gradstore "
             f"{env.get('gradstore')} ({env.get('commit', '?')}); model "
             f"`{Path(plan['model']).name}/{plan['gguf_file'] or ''}`, device {plan['device']}.",
             "", "## Set-up", "",
             f"- **Pool**: {plan['pool_per_task']} rows of each of {len(plan['tasks'])} "
             f"reasoning-gym tasks (`benchmarks/e2e/rg_tasks.py`; "
             f"{plan['pool_per_task'] * len(plan['tasks'])} rows): {', '.join(plan['tasks'])}.",
             f"- **Targets** from the tasks the calibration kept (`{CALIBRATION[plan['suite']]}`"
             f"): {', '.join(targets_of(plan))} ({alone} cells: "
             f"{', '.join(plan['single_targets'])}); {plan['target_size']} rows each; test rows "
             "disjoint from pool and targets "
             f"({plan['single_test_rows']} per {alone} cell, "
             f"{plan['mix_test_per_skill']} per part of a mixture).",
             f"- **Mixtures** (the selectors see no labels): {mixes}.",
             *([f"- **Flooded pool**: the first {plan['flood_size']} pool rows, >= "
                f"{plan['flood_share']:.0%} of them copies in families of 5-50 (half exact, "
                "half re-worded)."] if plan["flood_targets"] else []),
             f"- **Arms**: single {plan['single_arms']} at {plan['single_budgets']}; mixtures "
             f"{plan['mix_arms']} at {plan['mix_budgets']}, plus {plan['mix_extra']}"
             + (f"; flooded {plan['flood_arms']} at {plan['flood_budgets']}"
                if plan["flood_targets"] else "") + f"; seeds {plan['seeds']}"
             + "".join(f"; seed {sd} also for {', '.join(arms)} on {fam} at {b}"
                       for fam, b, sd, arms in plan.get("extra_seeds", []))
             + " (a cell's scores: the mean over its seeds).",
             f"- **Features**: gradients after a warm-up on {plan['warmup_fraction']:.0%} of "
             f"the pool ({plan['warmup_epochs']} epochs, LoRA {plan['warmup_layers'] or 'all'}"
             f"), d={plan['proj_dim']}; hidden states of the base model (`--features hidden`)"
             " for `rds` and `hidden-topk`.",
             f"- **Fine-tunes**: LoRA r=8 on {plan['lora_layers'] or 'every layer'}, lr "
             f"{plan['lr']}, batch {plan['batch_size']}, {plan['passes']} example passes asked "
             "(whole epochs: round(passes / k) of a k-row selection); exact match "
             "teacher-forced.", ""]
    secs = job_seconds(jobs)
    lines += [f"Jobs recorded: {len(sel)} selection fine-tunes ({len(trained)} trained, the "
              f"rest identical to one of them). Time: pipeline {sum(timing.values()) / 60:.1f} "
              f"min ({', '.join(f'{k} {v / 60:.1f}' for k, v in timing.items())}), jobs "
              f"{secs / 60:.1f} min.", ""]
    if base is not None:
        lines += ["Untrained model: " + ", ".join(
            f"{k} {100 * v['accuracy']:.1f}% / {v['loss']:.2f}"
            for k, v in sorted(base["scores"].items())) + ".", ""]
    return lines


CALIBRATION = {"rg": "rg_calibration_r160_all.md",
               "rg-heldout": "rg_calibration_r160_candidates.md",
               "rg12": "rg_calibration_r160_all.md` and `rg_calibration_r160_candidates.md"}
"""Where each plan's targets were calibrated."""
TITLE_TAIL = {"rg": "", "rg-heldout": ": the held-out re-check",
              "rg12": ": every calibrated task"}


def targets_of(plan: dict) -> list[str]:
    """Every task a target of the plan draws on: the single and flooded families' and the
    mixtures' parts."""
    parts = [t for m in plan["mixtures"] for t in plan["mixture_specs"][m]]
    return list(dict.fromkeys([*plan["single_targets"], *plan["flood_targets"], *parts]))


def composition_lines(summ: dict) -> list[str]:
    block = summ.get("mix")
    if not block:
        return []
    lines = ["Mixture cells where an arm left a part of the target without a single row:", "",
             "| arm | cells with an empty part |", "|---|---|"]
    for arm in block["means"]:
        empty = sum(c[arm].get("parts_empty", 0) > 0 for c in block["cells"].values()
                    if arm in c)
        lines.append(f"| {arm} | {empty} of {block['means'][arm]['cells']} |")
    return lines + [""]


def write(plan: dict, timing: dict, records: Path, results: Path, name: str, command: str,
          env: dict) -> None:
    jobs = load(records)
    summ = summary(jobs, plan)
    results.mkdir(parents=True, exist_ok=True)
    has_figure = figure(summ, results / f"{name}.png") if summ else False
    notes_file = results / f"{name}_notes.md"
    lines = ["# End-to-end selection quality on reasoning-gym tasks (SmolLM2-135M-Instruct, "
             f"LoRA){TITLE_TAIL[plan['suite']]}", "", *setup_lines(plan, timing, jobs, command,
                                                                    env)]
    if notes_file.exists():
        lines += [notes_file.read_text().strip(), ""]
    if has_figure:
        lines += [f"![paired differences to default GTP]({name}.png)", ""]
    lines += tables(summ) + composition_lines(summ) + budget_lines(summ)
    (results / f"{name}.json").write_text(json.dumps(
        {"command": command, "environment": env, "plan": plan, "pipeline_seconds": timing,
         "summary": summ}, indent=1) + "\n")
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")


def composition_table(work: Path, plan: dict) -> list[str]:
    """The mixture selections' composition, before any fine-tune: rows of each part of the
    target (in the target's order) + rows of other tasks, per arm and budget, read from the
    plan's selection files in ``work`` (``WORK/selections``, ``WORK/data``)."""
    rows = {}
    for name in ("pool", "flood"):
        path = work / "data" / f"{name}.jsonl"
        if path.exists():
            rows |= {r["id"]: r for r in map(json.loads, path.open(encoding="utf-8"))}
    sels: dict[tuple, list[str]] = {}
    for f in sorted((work / "selections").glob("mix-*.json")):
        arm = f.stem.removeprefix("mix-").removesuffix("-seed0")
        for sel in json.loads(f.read_text()):
            target = sel["target"].removeprefix("target-mix-").removesuffix("-hidden")
            sels[(target, parse_budget(sel["budget"]), arm)] = sel["ids"]
    arms = list(dict.fromkeys(a for _, _, a in sels))
    budgets = sorted({b for _, b, _ in sels})
    lines = ["| mixture | budget | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    empty = dict.fromkeys(arms, 0)
    off = dict.fromkeys(arms, 0)
    cells = dict.fromkeys(arms, 0)
    for m, spec in plan["mixture_specs"].items():
        for b in budgets:
            out = []
            for a in arms:
                ids = sels.get((m, b, a))
                if ids is None:
                    out.append("")
                    continue
                per = [sum(rows[i]["skill"] == t for i in ids) for t in spec]
                other = len(ids) - sum(per)
                cells[a] += 1
                empty[a] += min(per) == 0
                off[a] += other > len(ids) / 2
                out.append("/".join(map(str, per)) + f" +{other}")
            lines.append(f"| {m} | {b:.0%} | " + " | ".join(out) + " |")
    lines += ["", "| arm | cells | a part without a row | most rows off the target's tasks |",
              "|---|---|---|---|"]
    lines += [f"| {a} | {cells[a]} | {empty[a]} | {off[a]} |" for a in arms]
    return lines


def rerun_check(first: Path, second: Path) -> dict:
    """A second run of a plan against the first, job by job: the jobs both recorded, those
    whose selection (fingerprint) and every score (loss and exact match, exactly) agree, the
    largest score difference, and each run's job seconds (the second's jobs reused from
    another job's record count no seconds, as in the first)."""
    a = {j["job"]["name"]: j for j in load(first)}
    b = {j["job"]["name"]: j for j in load(second)}
    both = sorted(a.keys() & b.keys())
    differ, largest = [], 0.0
    for name in both:
        x, y = a[name], b[name]
        gap = max((abs(x["scores"][s][m] - y["scores"][s][m])
                   for s in x["scores"].keys() & y["scores"].keys()
                   for m in ("loss", "accuracy")), default=0.0)
        same = (x.get("selection_fingerprint") == y.get("selection_fingerprint")
                and x["scores"].keys() == y["scores"].keys() and gap == 0.0)
        largest = max(largest, gap)
        if not same:
            differ.append(name)
    seconds = [job_seconds(list(run.values())) for run in (a, b)]
    return {"jobs": [len(a), len(b)], "both": len(both), "differ": differ,
            "largest_gap": largest, "seconds": seconds}


def rerun_lines(first: Path, second: Path) -> list[str]:
    r = rerun_check(first, second)
    return [f"Jobs: {r['jobs'][0]} in {first}, {r['jobs'][1]} in {second}; {r['both']} in "
            f"both, {r['both'] - len(r['differ'])} with the same selection and the same "
            f"scores (largest score difference {r['largest_gap']:.3g}).",
            f"Job seconds: {r['seconds'][0] / 60:.1f} min, then {r['seconds'][1] / 60:.1f} "
            "min.", *(f"differs: {n}" for n in r["differ"])]


def main(argv: list[str] | None = None) -> None:
    args = list(argv if argv is not None else sys.argv[1:])
    if args and args[0] == "--composition":  # --composition WORK RESULTS_JSON
        plan = json.loads(Path(args[2]).read_text())["plan"]
        print("\n".join(composition_table(Path(args[1]), plan)))
        return
    if args and args[0] == "--pooled":  # --pooled RECORDS... [OUT.md]
        paths = [Path(a) for a in args[1:]]
        text = pooled_report([p for p in paths if p.suffix != ".md"])
        for out in (p for p in paths if p.suffix == ".md"):
            out.write_text(text)
        print(text)
        return
    if args and args[0] == "--rerun":  # --rerun FIRST_RECORDS SECOND_RECORDS
        print("\n".join(rerun_lines(Path(args[1]), Path(args[2]))))
        return
    records = Path(args[0])
    print("\n".join(tables(summary(load(records), plan_of(records)))))


if __name__ == "__main__":
    main()
