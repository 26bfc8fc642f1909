"""The float-sensitive tests (``tests/kernels.py``: fits, scans, pursuits, golden
selections, clusters) under each OpenBLAS kernel this CPU can run, beside the suite's own
kernel: a tolerance that holds under one kernel only is a wrong tolerance."""

import pytest

from tests.kernels import KERNELS, float_tests_under


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_float_tests_hold_under_the_kernel(kernel):
    code, out = float_tests_under(kernel)
    if code is None:
        pytest.skip(out)
    assert code == 0, out[-6000:]
    assert " passed" in out.strip().splitlines()[-1]
