"""Shared test fixtures: where the real sensor data lives, and the GPU marker's skip rule."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """../shared/realdata, or skip when this checkout has none next to it."""
    if not REALDATA.is_dir():
        pytest.skip(f"real sensor data not found at {REALDATA} (it sits next to the repository on CI)")
    return REALDATA


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU tests
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in gpu_items:
        item.add_marker(skip)
