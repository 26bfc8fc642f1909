"""Turn a benchmark working directory into ``e2e.json``, ``e2e.md`` and ``e2e.png``.

    python benchmarks/e2e/report.py --work bench-e2e --results benchmarks/results

Reads ``WORK/plan.json``, ``WORK/pipeline_seconds.json`` and ``WORK/jobs/*.json``;
runs again at any time (also on a partial run: missing cells are marked). If
``RESULTS/e2e_notes.md`` exists, its text is the "What we see" section.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

METHOD_ORDER = ["gtp", "gtp+adam", "less", "omp", "random"]
COLORS = dict(zip(METHOD_ORDER, ["tab:blue", "tab:cyan", "tab:orange", "tab:green", "tab:red"],
                  strict=True))


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


def load(work: Path) -> tuple[dict, dict, list[dict]]:
    plan = json.loads((work / "plan.json").read_text())
    timing_file = work / "pipeline_seconds.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    jobs = [json.loads(p.read_text()) for p in sorted((work / "jobs").glob("*.json"))]
    return plan, timing, jobs


def eval_set(scenario: str) -> str:
    return "mixed" if scenario == "indomain" else f"test-{scenario}"


def summarise(plan: dict, jobs: list[dict]) -> dict:
    """Rows per scenario: (method, budget) -> lists over seeds, plus the references."""
    scenarios = [*plan["targets"], "indomain"]
    out: dict = {}
    refs = {j["job"]["kind"]: j for j in jobs if j["job"]["kind"] in ("base", "full")}
    for sc in scenarios:
        es = eval_set(sc)
        rows: dict[tuple[str, str], dict] = {}
        for j in jobs:
            job = j["job"]
            if job["kind"] != "selection" or es not in j["scores"]:
                continue
            if job["scenario"] not in (sc, "any"):
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
        ordered = sorted(rows.items(), key=lambda kv: (
            plan["budgets"].index(kv[0][1]) if kv[0][1] in plan["budgets"] else 99,
            METHOD_ORDER.index(kv[0][0])))
        out[sc] = {
            "eval_set": es,
            "rows": [{"method": m, "budget": b, **cell} for (m, b), cell in ordered],
            "references": {kind: {"accuracy": r["scores"][es]["accuracy"],
                                  "loss": r["scores"][es]["loss"]}
                           for kind, r in refs.items() if es in r["scores"]},
        }
    return out


def markdown(plan: dict, timing: dict, jobs: list[dict], summary: dict, command: str,
             env: dict, notes: str | None) -> str:
    n_sel = sum(j["job"]["kind"] == "selection" for j in jobs)
    train_s = sum(j.get("train_seconds", 0) for j in jobs)
    eval_s = sum(j.get("eval_seconds", 0) for j in jobs)
    lines = [
        "# End-to-end selection quality (SmolLM2-135M-Instruct, LoRA)", "",
        f"`{command}`", "",
        f"{env.get('machine', '?')}; python {env.get('python')}, torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}, peft {env.get('peft')}, gradstore "
        f"{env.get('gradstore')} ({env.get('commit')}); model `{Path(plan['model']).name}"
        f"{'/' + plan['gguf_file'] if plan.get('gguf_file') else ''}`, device {plan['device']}.",
        "",
        "## Set-up", "",
        f"- **Pool**: {plan['pool_size']} examples of 8 exact-match skills "
        f"(`benchmarks/e2e/make_pool.py`), {plan['dup_share']:.0%} of them planted "
        f"near-duplicates (an earlier example re-worded, same answer). Per skill: a target set "
        f"of {plan['target_size']} and a test set of {plan['test_size']}, disjoint from the "
        f"pool. In-domain runs are scored on a mixed test set of {plan['mixed_per_skill']} "
        "test examples per skill.",
        f"- **gradstore, through its CLI**: `gradstore run` warm-up on "
        f"{plan['warmup_fraction']:.0%} of the pool ({plan['warmup_epochs']} epochs, lr "
        f"{plan['warmup_lr']}, LoRA {plan['warmup_layers'] or 'all layers'}), Adam gradients "
        f"at both checkpoints projected to d={plan['proj_dim']}; then `gradstore select "
        "--format json` per method for each target skill's table and with no target "
        f"(in-domain), budgets {', '.join(plan['budgets'])} (omp: "
        f"{', '.join(plan['omp_budgets'])}).",
        f"- **Fine-tunes**: LoRA r=8 on {plan['lora_layers'] or 'all layers'}, lr {plan['lr']}, "
        f"batch {plan['batch_size']}, linear decay, gradstore's own trainer; every selection "
        f"gets the same {plan['passes']} example passes (epochs = {plan['passes']} / selection "
        "size, rounded), so methods differ only in *which* examples they chose. The selected "
        "examples are trained on unweighted (GTP's weights are not used). Seeds "
        f"{plan['seeds']} change the LoRA initialisation, the data order and the random "
        "baseline's draw; the warm-up, store and the deterministic selections are shared. "
        "Full pool: one epoch over all of it, one seed.",
        "- **gtp+adam**: GTP against the same targets ingested with Adam-preconditioned "
        "gradients, the pool's own space (`gradstore ingest --grad-type adam`); the other "
        "methods use gradstore's default for targets, plain SGD gradients as in LESS.",
        "- **Metrics**: `acc` exact-match accuracy of batched greedy decoding; `loss` mean "
        "teacher-forced cross-entropy on the answer tokens; `skill` share of the selection from "
        "the target skill; `dups` share of the selection spent on a near-duplicate of an "
        "example already selected ((chosen − distinct originals) / chosen); `sel s` selection "
        "seconds; `n` examples chosen (GTP and OMP stop early when more examples stop lowering "
        "the residual). Mean ± sample std over seeds.",
        "",
        f"Time: warm-up + ingest {timing.get('warmup_and_ingest', math.nan) / 60:.1f} min, "
        f"{n_sel} selection fine-tunes + references: training {train_s / 60:.1f} min, "
        f"evaluation {eval_s / 60:.1f} min.", "",
    ]
    if notes:
        lines += ["## What we see", "", notes.strip(), ""]
    for sc, block in summary.items():
        title = ("In-domain selection (no target), mixed test set" if sc == "indomain"
                 else f"Target skill `{sc}` (test set `{block['eval_set']}`)")
        lines += [f"## {title}", ""]
        refs = block["references"]
        for kind, label in (("base", "untrained model"), ("full", "full pool, 1 epoch")):
            if kind in refs:
                lines.append(f"- {label}: acc {refs[kind]['accuracy'] * 100:.1f}%, "
                             f"loss {refs[kind]['loss']:.3f}")
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
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.6),
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
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method,
                            color=COLORS[method])
        refs = block["references"]
        if "full" in refs:
            ax.axhline(100 * refs["full"]["accuracy"], color="black", ls="--", lw=1,
                       label="full pool")
        if "base" in refs:
            ax.axhline(100 * refs["base"]["accuracy"], color="grey", ls=":", lw=1,
                       label="untrained")
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(work: Path, results: Path, command: str, env: dict) -> None:
    plan, timing, jobs = load(work)
    summary = summarise(plan, jobs)
    results.mkdir(parents=True, exist_ok=True)
    notes_file = results / "e2e_notes.md"
    notes = notes_file.read_text() if notes_file.exists() else None
    payload = {"command": command, "environment": env, "plan": plan,
               "pipeline_seconds": timing, "summary": summary, "jobs": jobs}
    (results / "e2e.json").write_text(json.dumps(payload, indent=1) + "\n")
    (results / "e2e.md").write_text(markdown(plan, timing, jobs, summary, command, env, notes))
    plot(plan, summary, results / "e2e.png")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench-e2e"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args(argv)
    prev = a.results / "e2e.json"
    old = json.loads(prev.read_text()) if prev.exists() else {}
    write(a.work, a.results, old.get("command", "python benchmarks/e2e/run.py"),
          old.get("environment", {}))


if __name__ == "__main__":
    main()
