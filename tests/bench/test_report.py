"""The benchmark's bookkeeping: selection statistics, the job plan, records and the report."""

from __future__ import annotations

import json
import statistics

import pytest
import report
import run
from scipy import stats


def pool_rows():
    rows = {}
    for i in range(6):
        rows[f"sort-{i}"] = {"id": f"sort-{i}", "skill": "sort", "group": f"sort-{i}"}
        rows[f"add-{i}"] = {"id": f"add-{i}", "skill": "add", "group": f"add-{i}"}
    rows["sort-0-dup"] = {"id": "sort-0-dup", "skill": "sort", "group": "sort-0"}
    rows["add-1-dup"] = {"id": "add-1-dup", "skill": "add", "group": "add-1"}
    return rows


def test_selection_stats_counts_target_share_and_redundant_copies():
    sel = {"ids": ["sort-0", "sort-0-dup", "sort-1", "add-1", "add-1-dup"], "k": 5,
           "residual": 0.5, "seconds": 0.1}
    st = run.selection_stats(sel, pool_rows(), "sort")
    assert st["chosen"] == 5
    assert st["target_share"] == pytest.approx(3 / 5)
    assert st["dup_share"] == pytest.approx(2 / 5)  # 3 distinct originals among 5
    assert st["skills"] == {"sort": 3, "add": 2}
    assert run.selection_stats({"ids": ["sort-0"]}, pool_rows(), "indomain")["target_share"] \
        is None


def test_budget_labels_match_the_cli_echo():
    plan = run.Plan(model="m", gguf_file=None)
    assert run.budget_label("0.01", plan) == "1%"
    assert run.budget_label(0.005, plan) == "0.5%"
    assert run.budget_label("5%", plan) == "5%"
    assert run.budget_label("0.2", plan) == "0.2"


def test_job_plan_covers_every_cell_once():
    plan = run.Plan(model="m", gguf_file=None)
    jobs = run.plan_jobs(plan)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    scenarios = len(plan.targets) + 1  # and in-domain
    per_seed = 1 + 3 + scenarios * (3 * 3 + 3)  # full, random x 3, (gtp, gtp-exact, less) x 3 + 3
    conv = 2 * 2 * 2  # targets x methods x budgets
    assert len(jobs) == 1 + len(plan.seeds) * per_seed + conv
    assert sum(j.steps_like_full for j in jobs) == conv
    assert {j.kind for j in jobs} == {"base", "full", "selection"}
    for j in jobs:
        if j.method == "random":
            assert set(j.evals) == {f"test-{t}" for t in plan.targets} | {"mixed"}
        elif j.scenario == "indomain":
            assert j.evals == ["mixed"]
        elif j.kind == "selection":
            assert j.evals == [f"test-{j.scenario}"]
        if j.method in plan.one_budget_methods:
            assert j.budget == plan.one_budget
    weighted = [j for j in jobs if j.method == "gtp-paper+w"]
    assert weighted and all(j.selection.split("|")[1] == "gtp-paper" for j in weighted)
    quick = run.Plan.for_device("cpu", quick=True, model="m", gguf_file=None)
    assert len(run.plan_jobs(quick)) == 2 * (3 * 3 + 1) + 3 + (3 * 3 + 1)
    calls = run.select_calls(plan)
    assert {c[1] for c in calls} == {"gtp", "gtp-exact", "less", "random", "gtp-paper", "omp"}
    assert run.cli_method("gtp-exact") == ("gtp", ["--tolerance", "0"])
    assert run.cli_method("less") == ("less", [])


def _sels(plan, ids=("sort-1", "sort-2")):
    return {run.sel_key(t, m, b, None): {"ids": list(ids), "weights": [0.5, 1.5],
                                         "seconds": 0.1}
            for t in [*plan.targets, "indomain"]
            for m in ("gtp", "less", "gtp-paper", "omp") for b in plan.budgets}


def test_job_keys_follow_the_selection_the_seed_and_the_weights():
    plan = run.Plan(model="m", gguf_file=None, targets=["sort"])
    jobs = {j.name: j for j in run.plan_jobs(plan)}
    sels = _sels(plan)
    a = run.job_key(jobs["sort-gtp-1%-seed0"], plan, sels)
    assert a == run.job_key(jobs["sort-gtp-5%-seed0"], plan, sels)  # same ids, same seed
    assert a != run.job_key(jobs["sort-gtp-1%-seed1"], plan, sels)
    assert a != run.job_key(jobs["sort-gtp-paper+w-1%-seed0"], plan, sels)  # weights count
    assert run.job_key(jobs["sort-gtp-paper-1%-seed0"], plan, sels) == a
    other = run.replace(plan, lr=0.5)
    assert run.job_key(jobs["sort-gtp-1%-seed0"], other, sels) != a
    reordered = _sels(plan, ("sort-2", "sort-1"))
    assert run.job_key(jobs["sort-gtp-1%-seed0"], plan, reordered) != a


def test_a_record_is_reused_only_with_a_matching_key(tmp_path):
    plan = run.Plan(model="m", gguf_file=None, targets=["sort"])
    jobs = {j.name: j for j in run.plan_jobs(plan)}
    keys = {"sort-gtp-1%-seed0": "k1", "sort-gtp-5%-seed0": "k1", "sort-less-1%-seed0": "k2"}
    scores = {"test-sort": {"accuracy": 0.25, "loss": 1.0, "n": 100}}
    run.write_json(tmp_path / "sort-gtp-1%-seed0.json", {
        "job": run.asdict(jobs["sort-gtp-1%-seed0"]), "key": "k1", "scores": scores,
        "train": {"examples": 2}})
    got = run.reuse(jobs["sort-gtp-5%-seed0"], "k1", tmp_path, keys)
    assert got["reused_from"] == "sort-gtp-1%-seed0" and got["scores"] == scores
    assert got["job"]["budget"] == "5%"
    assert run.reuse(jobs["sort-less-1%-seed0"], "k2", tmp_path, keys) is None
    # a committed record of the job itself, made with other settings, is not reused
    assert run.reuse(jobs["sort-gtp-1%-seed0"], "k9", tmp_path, keys | {
        "sort-gtp-1%-seed0": "k9"}) is None


def test_an_older_plan_without_a_new_field_still_matches():
    plan = run.Plan(model="m", gguf_file=None)
    old = run.asdict(plan)
    del old["convergence_seed"]
    assert run.plan_matches(old, plan)
    assert not run.plan_matches(old | {"lr": 0.5}, plan)
    assert not run.plan_matches(old | {"gone": 1}, plan)


def fake_job(scenario, method, budget, seed, acc, loss, evals, kind="selection", dup=0.0,
             conv=False):
    return {
        "job": {"name": f"{kind}-{scenario}-{method}-{budget}-{seed}-{conv}", "kind": kind,
                "evals": evals,
                "seed": seed, "scenario": scenario, "method": method, "budget": budget,
                "steps_like_full": conv},
        "selection": {"chosen": 10, "dup_share": dup, "seconds": 0.5,
                      "skills": {"sort": 6, "add": 4}, "target_share": None},
        "scores": {e: {"accuracy": acc, "loss": loss, "n": 100} for e in evals},
        "train": {"steps": 250}, "train_seconds": 10.0, "eval_seconds": 5.0,
    }


@pytest.fixture
def records(tmp_path):
    out = tmp_path / "records"
    out.mkdir()
    gtp = [0.50, 0.70, 0.66]
    less = [0.45, 0.60, 0.70]
    jobs = [fake_job("sort", "gtp", "1%", s, a, 1.0, ["test-sort"]) for s, a in enumerate(gtp)]
    jobs += [fake_job("sort", "less", "1%", s, a, 1.2, ["test-sort"], dup=0.1)
             for s, a in enumerate(less)]
    jobs += [
        fake_job("any", "random", "1%", 0, 0.10, 2.0, ["test-sort", "mixed"]),
        fake_job("indomain", "less", "5%", 0, 0.30, 1.5, ["mixed"]),
        fake_job(None, None, None, 0, 0.05, 3.0, ["test-sort", "mixed"], kind="base"),
        fake_job(None, None, None, 0, 0.80, 0.5, ["test-sort", "mixed"], kind="full"),
        fake_job("sort", "gtp", "5%", 0, 0.78, 0.6, ["test-sort"], conv=True),
    ]
    for j in jobs:
        (out / f"{j['job']['name']}.json").write_text(json.dumps(j))
    return out


def _plan():
    return run.plan_dict(run.Plan(model="/x/SmolLM2", gguf_file="f.gguf", targets=["sort"],
                                  budgets=["1%", "5%"]))


def test_summary_means_and_sample_std(records):
    plan = _plan()
    summary = report.summarise(plan, report.load(records))
    rows = {(r["method"], r["budget"]): r for r in summary["sort"]["rows"]}
    gtp = rows[("gtp", "1%")]
    assert gtp["accuracy"] == [0.5, 0.7, 0.66] and gtp["target_share"] == [0.6] * 3
    assert ("random", "1%") in rows  # the random baseline is scored on every test set
    assert ("gtp", "5%") not in rows  # the convergence arm is reported on its own
    assert summary["sort"]["references"]["base"]["accuracy"] == [0.05]
    text = report.fmt(gtp["accuracy"], pct=True)
    assert text == f"{100 * statistics.fmean([0.5, 0.7, 0.66]):.1f} ± " \
                   f"{100 * statistics.stdev([0.5, 0.7, 0.66]):.1f}"
    assert report.fmt([]) == "–" and report.fmt([0.25], pct=True) == "25.0"


def test_paired_difference_and_interval_against_scipy(records):
    plan = _plan()
    pc = report.paired(plan, report.load(records))
    d = [5.0, 10.0, -4.0]
    assert pc["n"] == 3 and pc["mean"] == pytest.approx(statistics.fmean(d))
    want = stats.t.interval(0.95, 2, loc=statistics.fmean(d), scale=stats.sem(d))
    assert pc["ci95"] == pytest.approx(list(want))
    (cell,) = pc["cells"]
    assert cell["diffs"] == pytest.approx(d) and not cell["worse_beyond_spread"]
    conv = report.convergence(plan, report.load(records))
    assert conv[0]["share_of_full"] == pytest.approx(0.78 / 0.80)


def test_write_makes_json_markdown_and_plot(records, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "e2e_notes.md").write_text("GTP wins here, because.\n")
    report.write(_plan(), {"warmup_and_ingest": 60.0}, records, out, "e2e",
                 "python benchmarks/e2e/run.py", {"torch": "2.13.0"})
    md = (out / "e2e.md").read_text()
    assert "GTP wins here, because." in md and "Target skill `sort`" in md
    assert "| 1% | less | 10 | 60.0 | 10.0 |" in md
    assert "mean **+3.67**" in md and "## Convergence arm" in md
    data = json.loads((out / "e2e.json").read_text())
    assert data["command"] == "python benchmarks/e2e/run.py" and data["paired"]["n"] == 3
    assert data["duplicates"]["less"]["1%"] == pytest.approx(0.1)
    pytest.importorskip("matplotlib")
    assert (out / "e2e.png").read_bytes()[:4] == b"\x89PNG"
