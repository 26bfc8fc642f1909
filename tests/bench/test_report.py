"""The benchmark's bookkeeping: the plan, selection statistics, records and the report."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace

import numpy as np
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


def test_selection_stats_counts_skills_and_copies():
    sel = {"ids": ["sort-0", "sort-0-dup", "sort-1", "add-1", "add-1-dup"], "k": 5,
           "residual": 0.5, "seconds": 0.1}
    st = run.selection_stats(sel, pool_rows())
    assert st["chosen"] == 5
    assert st["dup_share"] == pytest.approx(2 / 5)  # 3 distinct originals among 5
    assert st["unique"] == pytest.approx(3 / 5)
    assert st["skills"] == {"sort": 3, "add": 2}


def test_budget_labels_match_the_cli_echo():
    plan = run.Plan(model="m", gguf_file=None)
    assert run.budget_label("0.0025", plan) == "0.25%"
    assert run.budget_label(0.05, plan) == "5%"
    assert run.budget_label("2%", plan) == "2%"
    assert run.budget_label("0.2", plan) == "0.2"


def test_job_plan_covers_every_cell_once_mixtures_first():
    plan = run.Plan(model="m", gguf_file=None)
    jobs = run.plan_jobs(plan)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    per_seed = (3 * 2 * 7 + 3 * 2) + 3 * 1 * 4 + 5 * 2 * 3  # mix, flood, single
    assert len(jobs) == 1 + 3 * per_seed
    assert jobs[0].kind == "base" and jobs[1].family == "mix" and jobs[-1].family == "single"
    assert [j.seed for j in jobs[1:]] == sorted(j.seed for j in jobs[1:])  # seed after seed
    mix = next(j for j in jobs if j.name == "mix-count70-upper30-less-labels-5%-seed1")
    assert mix.evals == ["mixtest-count", "mixtest-upper"]
    flood = next(j for j in jobs if j.name == "flood-sort-less-dedup-2%-seed2")
    assert flood.evals == ["test-sort"] and flood.selection == "flood-sort|less-dedup|2%"
    rnd = [j.selection for j in jobs if j.arm == "random"]
    assert "mix-count70-upper30|random|5%|seed2" in rnd and len(set(rnd)) == len(rnd)
    tables = {c.arm: c.table for c in run.cells(plan) if c.target == "count70-upper30"}
    assert tables["less-labels"] == "target-mix-count70-upper30-labels"
    assert tables["gtp"] == "target-mix-count70-upper30"
    assert run.Cell("flood", "sort", "gtp", "2%").pool == "flood"


def test_eval_sets_are_the_test_files_cut_to_size():
    plan = run.Plan(model="m", gguf_file=None)
    names = run.eval_names(plan)
    assert names["test-convert"] == ("convert", 150)
    assert names["mixtest-words"] == ("words", 75)
    assert {n for j in run.plan_jobs(plan) for n in j.evals} <= set(names)


def _sels(plan, ids=("sort-1", "sort-2")):
    return {c.key(s): {"ids": list(ids), "weights": [1.0] * len(ids)}
            for c in run.cells(plan) for s in plan.seeds}


def test_job_keys_follow_the_selection_the_seed_and_the_settings():
    plan = run.Plan(model="m", gguf_file=None)
    jobs = {j.name: j for j in run.plan_jobs(plan)}
    sels = _sels(plan)
    a = run.job_key(jobs["sort-gtp-5%-seed0"], plan, sels)
    assert a == run.job_key(jobs["sort-less-5%-seed0"], plan, sels)  # same ids, seed, sets
    assert a != run.job_key(jobs["sort-gtp-5%-seed1"], plan, sels)
    assert a != run.job_key(jobs["convert-gtp-5%-seed0"], plan, sels)  # scored elsewhere
    assert run.job_key(jobs["sort-gtp-5%-seed0"], replace(plan, lr=0.5), sels) != a
    reordered = _sels(plan, ("sort-2", "sort-1"))
    assert run.job_key(jobs["sort-gtp-5%-seed0"], plan, reordered) != a


def test_a_record_is_reused_only_with_a_matching_key(tmp_path):
    plan = run.Plan(model="m", gguf_file=None)
    jobs = {j.name: j for j in run.plan_jobs(plan)}
    keys = {"sort-gtp-5%-seed0": "k1", "sort-less-5%-seed0": "k1", "sort-gtp-0.25%-seed0": "k2"}
    scores = {"test-sort": {"accuracy": 0.25, "loss": 1.0, "n": 100}}
    run.write_json(tmp_path / "sort-gtp-5%-seed0.json", {
        "job": run.asdict(jobs["sort-gtp-5%-seed0"]), "key": "k1", "scores": scores})
    got = run.reuse(jobs["sort-less-5%-seed0"], "k1", tmp_path, keys)
    assert got["reused_from"] == "sort-gtp-5%-seed0" and got["scores"] == scores
    assert got["job"]["arm"] == "less"
    assert run.reuse(jobs["sort-gtp-0.25%-seed0"], "k2", tmp_path, keys) is None
    assert run.reuse(jobs["sort-gtp-5%-seed0"], "k9", tmp_path, keys | {
        "sort-gtp-5%-seed0": "k9"}) is None


def test_a_store_for_another_plan_is_refused_but_arms_may_change():
    plan = run.Plan(model="m", gguf_file=None)
    old = run.asdict(plan)
    assert run.plan_matches(old | {"mix_arms": ["gtp"], "seeds": [0]}, plan)
    assert not run.plan_matches(old | {"proj_dim": 512}, plan)
    del old["flood_share"]  # a field an older plan.json lacks takes its default
    assert run.plan_matches(old, plan)


def record(family, target, arm, budget, seed, accs, skills, chosen=20, unique=1.0):
    evals = ([f"mixtest-{s}" for s in accs] if family == "mix"
             else [f"test-{target}"])
    return {"job": {"name": f"{target}-{arm}-{budget}-{seed}", "kind": "selection",
                    "family": family, "target": target, "arm": arm, "budget": budget,
                    "seed": seed, "evals": evals},
            "selection": {"chosen": chosen, "skills": skills, "dup_share": 1 - unique,
                          "unique": unique},
            "scores": {e: {"accuracy": a, "loss": 1.0, "n": 100}
                       for e, a in zip(evals, accs.values(), strict=True)}}


def test_mixture_metrics_weight_by_the_target_shares():
    r = record("mix", "count70-upper30", "gtp", "1%", 0, {"count": 0.5, "upper": 0.2},
               {"count": 12, "upper": 6, "add": 2})
    m = report.metrics(r)
    assert m["weighted"] == pytest.approx(0.7 * 50 + 0.3 * 20)
    assert m["worst"] == pytest.approx(20)
    c = report.composition(r)
    assert c["share[count]"] == pytest.approx(60) and c["other"] == pytest.approx(10)
    assert c["gap"] == pytest.approx(10)  # 60 vs 70 and 30 vs 30


def test_bootstrap_of_a_constant_difference_is_that_constant():
    m, lo, hi = report.bootstrap_mean({("a", "1%"): [2.0, 2.0], ("b", "1%"): [2.0]})
    assert (m, lo, hi) == (2.0, 2.0, 2.0)


def test_bootstrap_interval_matches_a_direct_resampling():
    diffs = {("a", "1%"): [1.0, 3.0, 2.0], ("b", "1%"): [-4.0, -2.0, -3.0],
             ("c", "1%"): [6.0, 5.0, 7.0]}
    m, lo, hi = report.bootstrap_mean(diffs, seed=3)
    assert m == pytest.approx(statistics.fmean([1, 3, 2, -4, -2, -3, 6, 5, 7]))
    groups = [np.asarray(v) for v in diffs.values()]
    rng = np.random.default_rng(3)
    means = []
    for _ in range(report.BOOTSTRAP):  # the two levels, written out again
        picked = [groups[i] for i in rng.integers(3, size=3)]
        means.append(np.mean(np.concatenate([g[rng.integers(3, size=3)] for g in picked])))
    assert (lo, hi) == tuple(np.percentile(means, [2.5, 97.5]))
    assert lo < m < hi and lo > -4 and hi < 7


@pytest.fixture
def records(tmp_path):
    out = tmp_path / "records"
    out.mkdir()
    mix = {"gtp": ({"count": 0.5, "upper": 0.4}, {"count": 14, "upper": 6}),
           "less": ({"count": 0.6, "upper": 0.0}, {"count": 20}),
           "less-rr": ({"count": 0.4, "upper": 0.3}, {"count": 10, "upper": 10})}
    recs = [record("mix", "count70-upper30", arm, "1%", s, {k: v + 0.01 * s
                                                            for k, v in accs.items()}, skills)
            for arm, (accs, skills) in mix.items() for s in (0, 1)]
    recs += [record("flood", "sort", "gtp", "2%", 0, {"sort": 0.3}, {"sort": 20}),
             record("flood", "sort", "less-dedup", "2%", 0, {"sort": 0.35}, {"sort": 20}),
             record("single", "sort", "gtp", "5%", 0, {"sort": 0.3}, {"sort": 20})]
    for r in recs:
        (out / f"{r['job']['name']}.json").write_text(json.dumps(r))
    return out


def test_summary_paired_and_strongest_baseline(records):
    jobs = report.load(records)
    mix = report.family_summary(jobs, "mix")
    worst = {p["b"]: p for p in mix["paired"] if p["metric"] == "worst"}
    assert worst["less"]["mean"] == pytest.approx(40.0)  # 40 - 0 on both seeds
    assert worst["less-rr"]["mean"] == pytest.approx(10.0)
    assert mix["strongest"] == {"weighted": "less", "worst": "less-rr"}
    weighted = {p["b"]: p for p in mix["paired"] if p["metric"] == "weighted"}
    assert weighted["less"]["mean"] == pytest.approx(0.7 * 50 + 0.3 * 40 - 0.7 * 60)
    assert weighted["less"]["pairs"] == 2 and weighted["less"]["strongest"]
    flood = report.family_summary(jobs, "flood")
    assert flood["paired"][0]["b"] == "less-dedup"  # no LESS arm here: the rest compare
    assert flood["paired"][0]["mean"] == pytest.approx(-5.0)


def test_write_makes_json_and_markdown_with_the_bars(records, tmp_path):
    plan = run.asdict(run.Plan(model="m", gguf_file=None))
    report.write(plan, {"warmup_and_ingest": 60.0}, records, tmp_path / "res", "e2e", "cmd",
                 {"machine": "x"})
    md = (tmp_path / "res" / "e2e.md").read_text()
    assert "## Mixture targets" in md and "## Duplicate-flooded pool" in md
    assert "Mixtures, worst sub-skill: GTP ≥ LESS + 5 with the interval above 0: **met**" in md
    assert "GTP ≥ LESS with near-duplicate filtering: not decided" in md  # one pair
    assert "Single skill: GTP non-inferior to LESS (mean ≥ 0, interval low ≥ −2): not " \
           "measured yet" in md
    assert "| count70-upper30 | 1% | less | 20 | 42.5 ± 0.7 | 0.5 ± 0.7 |" in md
    data = json.loads((tmp_path / "res" / "e2e.json").read_text())
    assert set(data["summary"]) == {"mix", "flood", "single"}


def test_the_held_out_plan_uses_only_tasks_the_rg_plan_never_did():
    """``--suite rg-heldout``: its targets are candidates outside the rg plan's catalogue
    that the calibration kept (their records: untrained < 5%, fine-tuned >= 30%), its
    mixtures are made of them only, and its pool holds every catalogue and candidate task."""
    import rg_tasks

    plan = run.Plan.for_device("cpu", suite="rg-heldout", model="m", gguf_file=None)
    assert plan.tasks == [*rg_tasks.TASKS, *rg_tasks.CANDIDATES]
    assert plan.pool_size == plan.pool_per_task * len(plan.tasks)
    records = run.HERE.parent / "results" / "rg_calibration_r160_candidates"
    for task in run.RG_HELDOUT_TARGETS:
        assert task in rg_tasks.CANDIDATES and task not in rg_tasks.TASKS
        rec = json.loads((records / f"{task}.json").read_text())
        assert rec["untrained"]["exact_match"] < 0.05 <= 0.30 <= rec["trained"]["exact_match"]
    for name in plan.mixtures:
        assert set(plan.mixture(name)) <= set(run.RG_HELDOUT_TARGETS)
    jobs = [j.name for j in run.plan_jobs(plan)]
    assert len(jobs) == 1 + len(plan.mixtures) * 2 * 5 + len(run.RG_HELDOUT_TARGETS) * 2
    assert not any(j.startswith("flood") for j in jobs)


def test_the_rg12_plan_draws_on_every_calibrated_task_with_15_cells_a_family():
    """``--suite rg12``: every task the calibration kept (its records: untrained < 5%,
    fine-tuned >= 30%) is a target of some cell, every family has >= 15 cells, and the
    jobs are the ones its 4-hour sizing counts (1 + 40 single + 96 mixture + 30 flooded)."""
    import rg_tasks

    plan = run.Plan.for_device("cpu", suite="rg12", model="m", gguf_file=None)
    assert plan.tasks == [*rg_tasks.TASKS, *rg_tasks.CANDIDATES]
    used = {*plan.single_targets, *plan.flood_targets,
            *(t for m in plan.mixtures for t in plan.mixture(m))}
    assert used == set(run.RG12_TASKS) and len(run.RG12_TASKS) == 12
    results = run.HERE.parent / "results"
    for task in run.RG12_TASKS:
        folder = "rg_calibration_r160_" + ("all" if task in rg_tasks.TASKS else "candidates")
        rec = json.loads((results / folder / f"{task}.json").read_text())
        assert rec["untrained"]["exact_match"] < 0.05 <= 0.30 <= rec["trained"]["exact_match"]
    assert set(plan.flood_targets) <= set(plan.single_targets)
    cells = run.cells(plan)
    for family, arm in (("single", "gtp"), ("mix", "gtp"), ("flood", "gtp"), ("mix", "rr"),
                        ("mix", "gtp-parts"), ("mix", "less"), ("single", "less"),
                        ("flood", "less-dedup")):
        got = {(c.target, c.budget) for c in cells if c.family == family and c.arm == arm}
        assert len(got) >= 15, (family, arm)
    for m in plan.mixtures:
        assert min(plan.mixture(m).values()) <= 0.4 and len(set(plan.mixture(m))) >= 2
    jobs = run.plan_jobs(plan)
    by_family = {f: sum(j.family == f for j in jobs) for f in ("single", "mix", "flood")}
    assert by_family == {"single": 40, "mix": 96, "flood": 30}
    assert len(jobs) == 167
    assert plan.hidden_pools() == ["pool"]  # no flooded-pool arm reads hidden states


def test_a_rebuilt_report_describes_the_plan_that_ran_its_jobs(tmp_path):
    """``--stage report`` on the first rg12 run's committed records: the report keeps the
    recorded plan (191 jobs, RDS+ on mixtures at 2%), not today's smaller one, and counts
    every record."""
    src = run.HERE.parent / "results"
    results = tmp_path / "results"
    (results / "e2e_rg12_jobs").mkdir(parents=True)
    old = json.loads((src / "e2e_rg12.json").read_text())
    (results / "e2e_rg12.json").write_text(json.dumps(old))
    names = sorted(p.name for p in (src / "e2e_rg12_jobs").glob("mix-*rds-2%*.json"))[:2]
    names += ["base.json", "add_sub-gtp-5%-seed0.json", "add_sub-less-5%-seed0.json"]
    for n in names:
        (results / "e2e_rg12_jobs" / n).write_text((src / "e2e_rg12_jobs" / n).read_text())
    run.main(["--suite", "rg12", "--stage", "report", "--model", "m", "--work",
              str(tmp_path / "work"), "--results", str(results)])
    assert not (tmp_path / "work-rg12").exists()  # a rebuild reads no store: no work folder
    new = json.loads((results / "e2e_rg12.json").read_text())
    assert new["plan"] == old["plan"] and ["rds", "2%"] not in new["plan"]["mix_extra"]
    assert "rds" in new["plan"]["mix_arms"] and new["command"] == old["command"]
    text = (results / "e2e_rg12.md").read_text()
    assert "Jobs recorded: 4 selection fine-tunes" in text
    assert "'rds', 'stratified'] at ['2%', '5%']" in text


def test_hidden_states_are_ingested_for_the_pools_whose_arms_read_them():
    rg = run.Plan.for_device("cpu", suite="rg", model="m", gguf_file=None)
    assert "rds" in rg.flood_arms and rg.hidden_pools() == ["pool", "flood"]
    no_hidden = replace(rg, single_arms=["gtp"], single_extra=[], mix_arms=["gtp"],
                        mix_extra=[], flood_arms=["gtp"], flood_extra=[])
    assert no_hidden.hidden_pools() == [] and not no_hidden.hidden()
    flood_only = replace(no_hidden, flood_extra=[["hidden-topk", "5%"]])
    assert flood_only.hidden_pools() == ["flood"] and flood_only.hidden()


def test_jobs_wait_while_the_pause_file_exists(tmp_path):
    """``WORK/PAUSE`` holds the next job back until it is deleted; no file, no wait."""
    import threading

    assert run.wait_while_paused(tmp_path) == 0.0
    flag = tmp_path / run.PAUSE_FILE
    flag.touch()
    waited = []
    t = threading.Thread(target=lambda: waited.append(run.wait_while_paused(tmp_path)))
    t.start()
    t.join(timeout=0.5)
    assert t.is_alive() and not waited  # still held
    flag.unlink()
    t.join(timeout=30)
    assert not t.is_alive() and waited[0] > 0
