"""The float-sensitive tests (``tests/kernels.py``: fits, scans, pursuits, golden
selections, clusters) under each OpenBLAS kernel this CPU can run, beside the suite's own
kernel: a tolerance that holds under one kernel only is a wrong tolerance."""

import os

import pytest

from tests.kernels import KERNELS, float_tests_under, kernel_in_effect


@pytest.fixture(scope="module")
def own_kernel() -> str:
    """The kernel the suite itself runs under (this machine's, or one forced already)."""
    return kernel_in_effect(dict(os.environ))


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_float_tests_hold_under_the_kernel(kernel, own_kernel):
    if kernel.lower() in own_kernel.split():
        pytest.skip(f"the suite itself runs under {kernel}")
    code, out = float_tests_under(kernel)
    if code is None:
        pytest.skip(out)
    assert code == 0, out[-6000:]
    assert " passed" in out.strip().splitlines()[-1]
