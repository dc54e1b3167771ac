"""Fixtures of the training tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_math_thread():
    """One intra-op thread for a module's training runs: on a shared 2-core machine two spinning threads can
    be 10x slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
