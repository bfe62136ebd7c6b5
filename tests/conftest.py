"""Shared fixtures (a seeded random generator, the bundled test data folder) and the
hypothesis profiles: ``ci`` (the default, a few examples per property-test case) and ``long``
(``HYPOTHESIS_PROFILE=long``: 400 per case, thousands in all; see the README)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,  # ORT session creation dominates and varies with the machine's load
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,  # a failure prints the line that reproduces it (@reproduce_failure)
)
settings.register_profile("ci", max_examples=20, **_COMMON)
settings.register_profile("long", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
