"""Shared pytest set-up: deterministic torch RNG per test, one torch thread per xdist worker."""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # -n 2 on 2 cores: two single-threaded workers beat oversubscription


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same torch RNG state, whatever ran before it in the worker."""
    torch.manual_seed(0)
