"""Fixtures shared by the test modules. Keep this small: module-specific helpers live in their modules."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Speeds measured on the developer's machine (~/.cache/volseg) would change the plans tests see: every test
# (and every CLI it starts) gets an empty cache of its own.
os.environ["VOLSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="volseg-test-cache-")

# The ISBI 2012 stacks sit beside the checkout (../shared/data/isbi2012); they are never copied into the repo.
ISBI_DIR = Path(__file__).resolve().parents[2] / "shared/data/isbi2012"


@pytest.fixture
def isbi_dir() -> Path:
    """The ISBI 2012 folder (train-volume.tif, train-labels.tif, test-volume.tif); skips when absent."""
    if not (ISBI_DIR / "train-volume.tif").is_file():
        pytest.skip(f"ISBI 2012 data not found at {ISBI_DIR}")
    return ISBI_DIR


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: tests never touch the global RNG."""
    return np.random.default_rng(12345)
