"""Shared fixtures: deterministic seeds and helpers that give models non-trivial BatchNorm state."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
