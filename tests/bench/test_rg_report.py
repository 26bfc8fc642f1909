"""The reasoning-gym report's pooled view (``rg_report.py --pooled``) on the committed job
records of two plans, against the paired differences computed here from the raw records;
and its check of a second run against the first (``--rerun``)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import rg_report

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PLANS = ("e2e_rg", "e2e_rg_heldout")


def weighted_by_cell(name: str) -> dict[tuple, dict[str, float]]:
    """(target, budget) -> arm -> exact match weighted by the target's shares, mean over
    seeds: straight from the records and the plan's mixture specs."""
    plan = json.loads((RESULTS / f"{name}.json").read_text())["plan"]
    runs: dict = defaultdict(lambda: defaultdict(list))
    for path in (RESULTS / f"{name}_jobs").glob("mix-*.json"):
        rec = json.loads(path.read_text())
        job, spec = rec["job"], plan["mixture_specs"][rec["job"]["target"]]
        total = sum(spec.values())
        runs[(job["target"], job["budget"])][job["arm"]].append(sum(
            100 * v / total * rec["scores"][f"mixtest-{t}"]["accuracy"]
            for t, v in spec.items()))
    return {cell: {arm: float(np.mean(v)) for arm, v in arms.items()}
            for cell, arms in runs.items()}


def test_pooled_mixture_differences_are_both_plans_cells_together():
    expected = {name: weighted_by_cell(name) for name in PLANS}
    cells = [c for name in PLANS for c in expected[name].values()]
    assert len(cells) == 26  # 16 cells of the rg plan, 10 of the held-out re-check
    diffs = [c["less"] - c["gtp"] for c in cells]
    summ = rg_report.pooled_summary([(n.removeprefix("e2e_"), rg_report.load(
        RESULTS / f"{n}_jobs"), rg_report.plan_of(RESULTS / f"{n}_jobs")) for n in PLANS])
    got = summ["mix"]["paired"]["less"]["weighted"]
    assert got["n"] == 26 and got["mean"] == pytest.approx(np.mean(diffs), abs=1e-9)
    half = 2.0595 * np.std(diffs, ddof=1) / np.sqrt(26)  # t(0.975, 25) = 2.0595
    assert got["hi"] - got["mean"] == pytest.approx(half, rel=1e-4)
    assert "rg:add_sub70-reverse_words30@2%" in summ["mix"]["cells"]  # named by plan


def test_pooled_report_names_its_command_and_every_plan():
    text = rg_report.pooled_report([RESULTS / f"{n}_jobs" for n in PLANS])
    assert "rg_report.py --pooled benchmarks/results/e2e_rg_jobs" in text
    assert "rg: 46" in text and "rg_heldout: 15" in text  # 16+15+15 cells; 10+5
    assert "## Mixtures of 2-3 tasks" in text and "by budget (weighted)" in text


def test_a_rerun_is_checked_job_by_job(tmp_path):
    """A copy of three committed records is the same run; a changed exact match, a changed
    selection and a job only one run has are each found."""
    names = ["add_sub-gtp-5%-seed0", "add_sub-less-5%-seed0", "add_sub-gtp-0.5%-seed0"]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    recs = {n: json.loads((RESULTS / "e2e_rg12_jobs" / f"{n}.json").read_text())
            for n in names}
    for n, rec in recs.items():
        (first / f"{n}.json").write_text(json.dumps(rec))
        (second / f"{n}.json").write_text(json.dumps(rec))
    same = rg_report.rerun_check(first, second)
    assert same["both"] == 3 and same["differ"] == [] and same["largest_gap"] == 0.0
    seconds = sum(r["train_seconds"] + r["eval_seconds"] for r in recs.values())
    assert same["seconds"] == [pytest.approx(seconds)] * 2

    moved = dict(recs[names[0]])
    moved["scores"] = {"test-add_sub": dict(moved["scores"]["test-add_sub"],
                                            accuracy=moved["scores"]["test-add_sub"]["accuracy"]
                                            + 1 / 60)}
    (second / f"{names[0]}.json").write_text(json.dumps(moved))
    (second / f"{names[1]}.json").write_text(json.dumps(
        recs[names[1]] | {"selection_fingerprint": "0" * 16}))
    (second / "extra-gtp-5%-seed0.json").write_text(json.dumps(
        recs[names[2]] | {"job": dict(recs[names[2]]["job"], name="extra-gtp-5%-seed0")}))
    got = rg_report.rerun_check(first, second)
    assert got["jobs"] == [3, 4] and got["both"] == 3
    assert got["differ"] == names[:2] and got["largest_gap"] == pytest.approx(1 / 60)
    assert "2 with the same selection" not in "\n".join(rg_report.rerun_lines(first, second))
    assert "1 with the same selection" in "\n".join(rg_report.rerun_lines(first, second))
