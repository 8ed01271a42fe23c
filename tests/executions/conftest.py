from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _clean_cache() -> None:
    """Override the suite-wide cache reset: sandbox tests touch neither the cache nor the database."""
