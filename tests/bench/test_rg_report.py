"""The reasoning-gym report's pooled view (``rg_report.py --pooled``) on the committed job
records of two plans, against the paired differences computed here from the raw records."""

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
