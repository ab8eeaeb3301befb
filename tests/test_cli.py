"""The command line, run as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "nvmf-phoenix"


def test_demo_is_the_main_job_and_passes() -> None:
    run = subprocess.run([str(BIN), "demo", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert result["ok"] and result["data_intact"] and result["hosts_missing"] == 0
    assert result["identity_before"] == result["identity_after"]
    assert result["restore"]["failures"] == [] and result["restore"]["differences"] == []


def test_usage_errors_exit_2() -> None:
    run = subprocess.run([str(BIN)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    run = subprocess.run([str(BIN), "no-such-command"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "invalid choice" in run.stderr
