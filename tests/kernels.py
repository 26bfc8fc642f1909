"""The float-sensitive tests again under each OpenBLAS kernel an x86-64 CPU may run
(``tests/test_kernels.py`` does this inside ``make test``, beside the suite, which runs under
the machine's own kernel).

numpy's and scipy's OpenBLAS picks its kernel (summation order, FMA, block sizes) from
the CPU; ``OPENBLAS_CORETYPE`` forces one. A tolerance that holds under one kernel and not
another is a wrong tolerance (tests/selectors/test_nnls.py shows how one is derived), so
every kernel this CPU can execute is tried, and the kernel in effect is checked through
threadpoolctl rather than assumed. A kernel whose instructions the CPU lacks is skipped
with a note (forcing it would stop the process with an illegal instruction).

    python -m tests.kernels            # every kernel below this CPU can run
    python -m tests.kernels Haswell    # one
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KERNELS = {"Haswell": {"avx2", "fma"}, "Sandybridge": {"avx"}}
"""Kernels forced, with the CPU flags each needs: AVX2 + FMA (most x86 servers since 2013)
and AVX (the kernel an AVX2-less CPU, or a VM that hides AVX2, runs)."""

FLOAT_TESTS = [
    f"tests/selectors/{name}.py" for name in (
        "test_nnls",  # NNLS on Gram matrices and rows, against scipy; derived bounds
        "test_greedy",  # the greedy NNLS pass and the swaps
        "test_gtp",  # the default pursuit against brute force and the formula
        "test_pursuit",  # gtp-paper and OMP against brute force
        "test_less_scan",  # scans and LESS scores against numpy
        "test_round_robin",  # round-robin against the rule in numpy
        "test_arrays",  # the array entry points
        "test_gram_cache",  # a candidate set's Gram matrix kept between scans
    )
] + [
    "tests/store/test_golden.py",  # the pinned selections of a stored fixture
    "tests/store/test_target_clusters.py",  # k-means and silhouettes of target rows
]
"""The tests whose answers rest on float sums (fits, scans, scores, clusters): seconds.
Subprocess and store plumbing tests run once, under the machine's own kernel."""
SKIP = "not across_processes"
"""Deselected here: starts fresh interpreters (the answer across processes, not kernels)."""


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def kernel_in_effect(env: dict[str, str]) -> str:
    """The OpenBLAS kernel numpy runs under ``env`` (lower case), as threadpoolctl reads it."""
    code = ("import numpy, threadpoolctl; print(*[i.get('architecture') for i in "
            "threadpoolctl.threadpool_info() if i.get('internal_api') == 'openblas'])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip().lower()


def float_tests_under(kernel: str, workers: int = 0) -> tuple[int | None, str]:
    """Run :data:`FLOAT_TESTS` under ``kernel``: (pytest's exit status, its output), or
    (None, why) when this CPU cannot run the kernel. Raises when numpy's OpenBLAS runs
    another kernel than the one forced."""
    flags = cpu_flags()
    if platform.machine() not in ("x86_64", "AMD64") or flags is None:
        return None, f"not an x86-64 Linux CPU ({platform.machine()}); nothing forced"
    missing = KERNELS[kernel] - flags
    if missing:
        return None, f"{kernel} skipped: this CPU lacks {', '.join(sorted(missing))}"
    env = dict(os.environ, OPENBLAS_CORETYPE=kernel)
    got = kernel_in_effect(env)
    if kernel.lower() not in got.split():
        raise RuntimeError(f"OPENBLAS_CORETYPE={kernel} ran {got or 'no OpenBLAS'}: numpy's "
                           "OpenBLAS ignored it")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *(["-n", str(workers)] if workers else []), "-m",
                           "not benchmark", "-k", SKIP, *FLOAT_TESTS],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def main(argv: list[str]) -> int:
    failed = []
    for kernel in argv or list(KERNELS):
        code, out = float_tests_under(kernel, workers=2)
        print(f"kernels: {kernel}: " + (out if code is None else out.strip().splitlines()[-1]),
              flush=True)
        if code:
            print(out[-4000:])
            failed.append(kernel)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
