"""Shared pytest set-up: deterministic torch RNG per test, one torch thread per process."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)  # small models on a shared 2-core machine: one thread per process is fastest


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same torch RNG state, whatever ran before it in the worker."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_bundle():
    """scikit-learn's digits as 64 features (seeded split), shared by the sweep tests."""
    from structprune.data import load_data

    return load_data("digits", input_shape=(64,), seed=0)
