"""The benchmark's bookkeeping: selection statistics, the job plan and the report."""

from __future__ import annotations

import json
import statistics

import pytest
import report
import run


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
    per_seed = 3 + 4 * (3 + 3 + 1)  # random x budgets; (targets + in-domain) x (gtp, less, omp@1%)
    per_seed += 3 * 3  # gtp against Adam-gradient targets: targets x budgets
    assert len(jobs) == 2 + len(plan.seeds) * per_seed
    assert sum(j.method == "gtp+adam" for j in jobs) == 18
    assert {j.kind for j in jobs} == {"base", "full", "selection"}
    for j in jobs:
        if j.method == "random":
            assert set(j.evals) == {"test-convert", "test-sort", "test-words", "mixed"}
        elif j.scenario == "indomain":
            assert j.evals == ["mixed"]
        elif j.kind == "selection":
            assert j.evals == [f"test-{j.scenario}"]
    cuda = run.Plan.for_device("cuda", model="m", gguf_file=None)
    assert cuda.seeds == [0, 1, 2] and cuda.omp_budgets == cuda.budgets


def test_a_job_on_an_identical_selection_and_seed_reuses_the_result(tmp_path):
    plan = run.Plan(model="m", gguf_file=None, targets=["sort"])
    jobs = [j for j in run.plan_jobs(plan) if j.scenario == "sort" and j.method == "gtp"]
    a, b, c = [j for j in jobs if j.seed == 0]
    a1 = next(j for j in jobs if j.seed == 1 and j.budget == a.budget)
    pool = pool_rows()
    sel = {a.selection: {"ids": ["sort-1", "sort-2"], "seconds": 0.3},
           b.selection: {"ids": ["sort-1", "sort-2"], "seconds": 0.4},
           c.selection: {"ids": ["sort-2", "sort-1"], "seconds": 0.5}}
    scores = {"test-sort": {"accuracy": 0.25, "loss": 1.0, "n": 100}}
    (tmp_path / f"{a.name}.json").write_text(json.dumps(
        {"job": run.asdict(a), "train": {"examples": 2, "epochs": 80}, "scores": scores}))
    got = run.reuse(b, jobs, tmp_path, sel, pool)
    assert got["reused_from"] == a.name and got["scores"] == scores
    assert got["job"]["budget"] == b.budget and got["selection"]["seconds"] == 0.4
    assert run.reuse(c, jobs, tmp_path, sel, pool) is None  # another order: another run
    assert run.reuse(a1, jobs, tmp_path, sel, pool) is None  # another seed


def test_an_older_plan_without_a_new_field_still_matches():
    plan = run.Plan(model="m", gguf_file=None)
    old = run.asdict(plan)
    del old["adam_target_methods"]
    assert run.plan_matches(old, plan)
    assert not run.plan_matches(old | {"lr": 0.5}, plan)
    assert not run.plan_matches(old | {"gone": 1}, plan)


def fake_job(scenario, method, budget, seed, acc, loss, evals, kind="selection"):
    return {
        "job": {"name": f"{scenario}-{method}-{budget}-{seed}", "kind": kind, "evals": evals,
                "seed": seed, "scenario": scenario, "method": method, "budget": budget},
        "selection": {"chosen": 10, "dup_share": 0.1 * seed, "seconds": 0.5,
                      "skills": {"sort": 6, "add": 4}, "target_share": None},
        "scores": {e: {"accuracy": acc, "loss": loss, "n": 100} for e in evals},
        "train_seconds": 10.0, "eval_seconds": 5.0,
    }


@pytest.fixture
def work(tmp_path):
    plan = run.Plan(model="/x/SmolLM2", gguf_file="f.gguf", targets=["sort"])
    (tmp_path / "jobs").mkdir()
    (tmp_path / "plan.json").write_text(json.dumps(run.asdict(plan)))
    jobs = [
        fake_job("sort", "gtp", "1%", 0, 0.50, 1.0, ["test-sort"]),
        fake_job("sort", "gtp", "1%", 1, 0.70, 0.8, ["test-sort"]),
        fake_job("any", "random", "1%", 0, 0.10, 2.0, ["test-sort", "mixed"]),
        fake_job("indomain", "less", "5%", 0, 0.30, 1.5, ["mixed"]),
        fake_job(None, None, None, 0, 0.05, 3.0, ["test-sort", "mixed"], kind="base"),
    ]
    for j in jobs:
        (tmp_path / "jobs" / f"{j['job']['name']}.json").write_text(json.dumps(j))
    return tmp_path


def test_summary_means_and_sample_std(work, tmp_path):
    plan, _, jobs = report.load(work)
    summary = report.summarise(plan, jobs)
    rows = {(r["method"], r["budget"]): r for r in summary["sort"]["rows"]}
    gtp = rows[("gtp", "1%")]
    assert gtp["accuracy"] == [0.5, 0.7] and gtp["target_share"] == [0.6, 0.6]
    assert ("random", "1%") in rows  # the random baseline is scored on every test set
    assert ("less", "5%") not in rows
    assert summary["indomain"]["rows"][0]["method"] in ("random", "less")
    assert summary["sort"]["references"]["base"]["accuracy"] == 0.05
    text = report.fmt(gtp["accuracy"], pct=True)
    assert text == f"60.0 ± {100 * statistics.stdev([0.5, 0.7]):.1f}"
    assert report.fmt([]) == "–" and report.fmt([0.25], pct=True) == "25.0"


def test_write_makes_json_markdown_and_plot(work, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "e2e_notes.md").write_text("GTP wins here, because.\n")
    report.write(work, out, "python benchmarks/e2e/run.py", {"torch": "2.13.0"})
    md = (out / "e2e.md").read_text()
    assert "GTP wins here, because." in md and "Target skill `sort`" in md
    assert "| 1% | gtp | 10 | 60.0 | 5.0 ± 7.1 |" in md
    data = json.loads((out / "e2e.json").read_text())
    assert data["command"] == "python benchmarks/e2e/run.py" and len(data["jobs"]) == 5
    pytest.importorskip("matplotlib")
    assert (out / "e2e.png").read_bytes()[:4] == b"\x89PNG"
