"""Unit-test fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: these ops are small, and on a busy 2-core machine OpenMP spin-waiting
    with two threads can be 10-40x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
