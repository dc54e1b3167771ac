"""Shared fixtures: deterministic seeds and helpers that give models non-trivial BatchNorm state."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist (scripts/test.sh runs a worker per core), each worker gets its share of the cores:
    # two workers of two threads each on two cores would make every test wait for the other's threads.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
