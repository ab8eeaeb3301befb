"""Command-line options of the test suite."""
from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--torture-kills", type=int, default=10,
                     help="SIGKILLs in the supervisor torture test (issue 7 asks for at "
                     "least 100 in a benchmark-style run)")
    parser.addoption("--damage-trials", type=int, default=10,
                     help="damaged queue-pair states in test_corruption (RELIABILITY.md "
                     "records a run of 300)")
    parser.addoption("--keeper-fuzz-examples", type=int, default=400,
                     help="fuzzed sessions against the crash-transparent target while its "
                     "worker is killed (RELIABILITY.md records a long run)")
    parser.addoption("--keeper-fuzz-kills", type=int, default=8,
                     help="SIGKILLs during that fuzzing")
