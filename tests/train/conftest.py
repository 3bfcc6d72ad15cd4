"""Every module here trains or compiles tiny models: see ``fast_compile`` in tests/conftest.py."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _fast_compile(fast_compile):
    """Applies the shared fixture to each module of this directory."""
