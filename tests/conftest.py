"""Options shared by every test directory (registered here so that
`pytest --regenerate` works from the repository root)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regenerate",
        action="store_true",
        default=False,
        help="rewrite golden files under tests/data/ from the current output",
    )
