"""Test-wide settings. The tests run tiny shapes, where torch's intra-op threads only contend
with each other (and with other processes on a 2-core CI machine): one thread is much faster."""
import os
import sys

import pytest
import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # tests share helpers (cases.py)


@pytest.fixture
def threads(request):
    """Runs a test with request.param intra-op threads (parametrize it with indirect=True), for
    the tests of the CPU kernels' threading; restores the thread count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
