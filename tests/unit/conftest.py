"""Options and fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def regenerate(request: pytest.FixtureRequest) -> bool:
    """True when golden files should be rewritten instead of compared.

    The environment variable also works when pytest starts from a directory
    where this conftest is not loaded early enough to register the option.
    """
    option = bool(request.config.getoption("--regenerate", default=False))
    return option or os.environ.get("KVMCTL_REGENERATE") == "1"
