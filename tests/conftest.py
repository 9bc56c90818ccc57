from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest


def pytest_configure(config: pytest.Config) -> None:
    # torch is optional for the library; the tests use it as users do.
    pytest.importorskip("torch")


@pytest.fixture
def seed_coords() -> OrderedDict[str, np.ndarray]:
    """Earth2Studio-like coordinates on a small grid."""
    return OrderedDict(
        ensemble=np.arange(3),
        time=np.array(["2022-12-20T00"], dtype="datetime64[ns]"),
        lead_time=(np.arange(4) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
        lat=np.linspace(90, -90, 9),
        lon=np.linspace(0, 360, 16, endpoint=False),
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here); the fake-CUDA tests cover the logic")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
