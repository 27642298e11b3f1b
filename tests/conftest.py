"""Shared fixtures and markers: cuda / ext tests skip when unavailable, data tests skip without
../shared/data, and every test runs single-threaded and seeded (2-core CI machines)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GLIMPSE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _kernels_available() -> bool:
    try:
        import glimpse_kernels  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device (none here)")
    skip_ext = pytest.mark.skip(reason="glimpse_kernels is not built (make setup builds it)")
    has_cuda = torch.cuda.is_available()
    has_ext = _kernels_available()
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "ext" in item.keywords and not has_ext:
            item.add_marker(skip_ext)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip naming what is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set GLIMPSE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def coco128(shared_data: Path) -> Path:
    root = shared_data / "coco128"
    if not (root / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"COCO128 not found under {root}")
    return root
