"""Command-line options of the test suite."""
from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--torture-kills", type=int, default=10,
                     help="SIGKILLs in the supervisor torture test (issue 7 asks for at "
                     "least 100 in a benchmark-style run)")
