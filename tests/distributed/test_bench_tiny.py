"""The tiny modes of the benchmarks that use Ray, on the tests' Ray cluster: the distributed
benchmark in this process (its own cluster start and worker warm-up were most of its time
as a subprocess); the million-row benchmark and the fault soak, whose ``select --ray``
children join the tests' cluster by its address instead of each starting one."""

import contextlib
import io
import tempfile
from pathlib import Path

import pytest

from benchmarks import distributed
from tests.bench.test_tiny_modes import run_here

pytestmark = pytest.mark.usefixtures("tmp_tempdir")  # tiny modes' folders: tmp_path


def test_distributed_tiny(ray_cluster):
    def folders() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("distributed_tiny_*"))

    before = folders()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        distributed.main(["--tiny"])
    text = out.getvalue()
    assert "Same ids in the same order: True" in text
    assert "| ray (1 worker) |" in text
    assert ray_cluster.is_initialized(), "the benchmark leaves the tests' cluster running"
    assert folders() <= before, "the tiny mode leaves its temporary folder behind"


def test_million_tiny(ray_address):
    out = run_here("million.py", "--ray", ray_address)
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| command")}
    assert {"import target 0", "import pool 0", "select gtp 1%", "select less 1%",
            "select gtp 1% --ray"} <= set(rows)  # tiny: one checkpoint
    assert rows["select gtp 1% --ray"][-1].strip() == "yes"  # the same answer on Ray
    assert rows["select less 1%"][1].strip() == "60"  # 1% of 6,000 rows chosen


def test_fault_soak_tiny_mode(ray_address):
    out = run_here("fault_soak.py", "--ray", ray_address)
    # (its commands run in child processes of their own)
    assert "Silent wrong answers: 0; crashes: 0; lost committed rows: 0." in out
    assert "# Fault soak: 19 faults" in out  # every kind of fault once, ray-flip included
    assert "| ray-flip |" in out
