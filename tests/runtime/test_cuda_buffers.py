"""The pycuda buffer path: sizing as plain functions; the round trip through a GPU where there is one."""

from __future__ import annotations

import numpy as np
import pytest

from agent.runtime.base import RunnerError
from agent.runtime.cuda_buffers import grown_capacity, nbytes_of


def test_nbytes_of_shapes() -> None:
    assert nbytes_of((2, 3, 4), np.float32) == 96
    assert nbytes_of((8,), "float16") == 16
    with pytest.raises(RunnerError, match="dynamic"):
        nbytes_of((-1, 3), np.float32)


def test_capacity_grows_by_doubling_and_never_shrinks() -> None:
    assert grown_capacity(0, 100) == 256
    assert grown_capacity(256, 200) == 256
    assert grown_capacity(256, 1000) == 1024
    assert grown_capacity(1024, 1025) == 2048


@pytest.mark.gpu
def test_round_trip_through_the_gpu() -> None:
    from agent.runtime.cuda_buffers import selftest

    report = selftest(megabytes=4, repeats=2)
    assert report["ok"], report
    assert report["max_abs_error"] == 0.0
