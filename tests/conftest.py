"""Shared fixtures: a seeded random generator and the bundled test data folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # the helper modules beside the tests
    sys.path.insert(0, str(TESTS))

DATA = TESTS / "data"


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's name, so each test is reproducible on its own."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.name)) % (2**32)
    return np.random.default_rng(seed)


@pytest.fixture
def data_dir() -> Path:
    return DATA
