"""The distributed benchmark's tiny mode, in this process on the tests' Ray cluster (its
own cluster start and worker warm-up were most of its time as a subprocess)."""

import contextlib
import io

from benchmarks import distributed


def test_distributed_tiny(ray_cluster):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        distributed.main(["--tiny"])
    text = out.getvalue()
    assert "Same ids in the same order: True" in text
    assert ray_cluster.is_initialized(), "the benchmark leaves the tests' cluster running"
