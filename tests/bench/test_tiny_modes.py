"""Every benchmark script runs in its tiny mode (seconds, synthetic data or a tiny model),
so an import or API change that breaks one fails here, not months later."""

import contextlib
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("tmp_tempdir")  # tiny modes' folders: tmp_path


def run(script: str, *args: str) -> str:
    """The script's tiny mode in a fresh interpreter (scripts that measure processes, or
    change this process's state)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--tiny", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def run_here(script: str, *args: str) -> str:
    """The script's tiny mode in this process: its ``main(argv)``, its output captured (the
    suite has torch and transformers imported already: a fresh interpreter's start-up was
    most of a light tiny mode's time). torch's thread count is restored afterwards."""
    path = ROOT / "benchmarks" / script
    spec = importlib.util.spec_from_file_location(f"tiny_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    threads, out = torch.get_num_threads(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = module.main(["--tiny", *args])
    finally:
        torch.set_num_threads(threads)
    assert not code, out.getvalue()[-2000:]
    return out.getvalue()


def test_selection_speed_tiny():
    out = run_here("selection_speed.py")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(r.get("same_top100") is True for r in rows)  # streamed scan == in-RAM scan
    assert any("gtp" in r and "omp" in r for r in rows)


def test_ingest_speed_tiny():
    out = run_here("ingest_speed.py")
    result = json.loads(out[out.index("{\n"):])
    assert result["examples"] == 8 and set(result["examples_per_s"]) == {
        "train-step", "less-loop", "gradstore", "gradstore-countsketch", "gradstore-factored",
        "gradstore-hidden"}
    assert "gradstore-factored / train-step" in result["ratios"]
    assert "gradstore-hidden / train-step" in result["ratios"]


def test_e2e_tiny():
    out = run_here("e2e/run.py")
    assert "done in" in out and "job 17/17" in out and "job 18/" not in out
    assert "17 of 17 fine-tune/eval jobs already recorded" in out  # the resumed pass
    for arm in ("less-rr", "oracle", "less-dedup"):  # the benchmark's own baselines ran
        assert f"baseline {arm} on" in out


def test_e2e_rg_tiny():
    """The reasoning-gym plan: every family, a gradient arm, a hidden-state arm and a
    benchmark baseline in each kind of family, the report with its paired tables."""
    out = run_here("e2e/run.py", "--suite", "rg", "--tiny")
    assert "job 11/11" in out and "11 of 11 fine-tune/eval jobs already recorded" in out
    assert "-gtp-10%-seed1:" in out  # the extra seed of a close comparison
    assert "--pool pool-hidden --method round-robin" in out  # RDS+: hidden states
    assert "stores only" not in out  # every arm read the features it asked for
    results = Path(re.search(r"results in (\S+)", out).group(1))
    md = (results / "e2e_rg.md").read_text()
    for family in ("Mixtures of 2-3 tasks", "Single tasks", "Duplicate-flooded pool"):
        assert f"## {family}" in md
    assert "| rds | 1 |" in md and "| less-dedup | 1 |" in md and "| stratified | 1 |" in md
    assert "seed 1 also for gtp on single at 10%" in md
    assert "### Single tasks, by budget (em)" in md  # the headline again, budget by budget


def test_memory_tiny():
    out = run_here("memory.py")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    assert {(r[0].strip(), r[1].strip()) for r in rows[2:]} == {  # tiny: the first budget
        ("import", "-"), *((m, "50MB") for m in ("less", "gtp", "gtp-paper", "omp"))}
    bound = {r[0].strip(): r[6].strip() for r in rows[2:] if r[1].strip() == "50MB"}
    assert bound["gtp"] == bound["less"] == "80" and bound["omp"] == "-"
    for r in rows[2:]:  # both peaks (resident set, anonymous memory) are measured
        float(r[4]), float(r[5])


def test_integrity_cost_tiny():
    out = run_here("integrity_cost.py")
    assert "pass, checked" in out and "Checks add" in out


def test_gpu_check_tiny():
    out = run_here("gpu_check.py")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {r["check"].split()[0] for r in rows} == {"scan", "less", "gtp", "ingest"}
    assert all(r["ok"] for r in rows if "ok" in r) and sum("ok" in r for r in rows) >= 3
    assert "0 of" in out and "checks failed" in out


def test_em_agreement_tiny():
    out = run_here("em_agreement.py")
    assert "Agreement: **" in out and "over 48 pairs" in out


def test_projection_quality_tiny():
    out = run_here("projection_quality.py")
    assert "factored" in out and "rademacher" in out


def test_vs_bergson_tiny():
    out = run_here("vs_bergson.py")  # Bergson's side runs only where .venv-bergson exists
    assert "gradstore factored 64" in out and "gradstore none (exact)" in out
    if (ROOT / ".venv-bergson" / "bin" / "python").exists():
        assert "bergson per-module p=2 (64)" in out and "bergson global 64" in out
        assert "Both tools' unprojected gradients agree" in out
    else:
        assert "Bergson skipped: .venv-bergson/bin/python not found" in out


def test_same_selections_tiny():
    out = run_here("same_selections.py")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 22  # 11 selections of the grid without Ray, at 2 budgets
    assert all(r[5].strip() == "yes" and r[6].strip() == "0" for r in rows)  # same code
    assert "22 of 22 selections chose the same ids in the same order; 22 of them" in out


def test_rg_calibrate_tiny():
    pytest.importorskip("reasoning_gym")
    out = run_here("e2e/rg_calibrate.py")
    assert "[2/2]" in out and "| task | untrained EM | trained EM |" in out
