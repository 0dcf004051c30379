"""Fixtures shared by the test folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def grape_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warm-start cache shared by every test of the session that asks for it."""
    return tmp_path_factory.mktemp("grape-cache")


@pytest.fixture(scope="module")
def campaign_env(grape_cache: Path) -> Iterator[None]:
    """GRAPE_CACHE for in-process runs and one torch thread: the tiny models are fastest that
    way, and two threads per process on a loaded two-core machine are far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAPE_CACHE", str(grape_cache))
        yield
    torch.set_num_threads(threads)
