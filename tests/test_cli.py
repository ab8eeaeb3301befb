"""The command line, run as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.phoenix_tools import drop_region

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


def test_supervise_restart_and_status_commands(tmp_path: Path) -> None:
    from nvmf_phoenix.rpc import RpcClient
    from nvmf_phoenix.rpc import nvmf as rn

    from tests.waiting import wait_for

    pub = str(tmp_path / "pub.sock")
    proc = subprocess.Popen([str(BIN), "supervise", "-s", pub, "--target-socket",
                             str(tmp_path / "priv.sock"), "--state-dir",
                             str(tmp_path / "state")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "supervisor ready" in proc.stdout.readline()
        with RpcClient.connect(pub) as c:
            rn.nvmf_create_subsystem(c, "nqn.2016-06.io.phx:cli", serial_number="CLI1")
        run = subprocess.run([str(BIN), "restart", "-s", pub, "--json"], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["restarts"] == 1
        run = subprocess.run([str(BIN), "status", "-s", pub, "--json", "--state-dir",
                              str(tmp_path / "state")], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        status = json.loads(run.stdout)
        assert status["supervisor"]["state"] == "ready"
        assert status["target"]["subsystems"] == 1
        # The supervisor's checkpoint is the state directory's checkpoint.
        assert status["checkpoint"]["summary"]["subsystems"] == 1
        with RpcClient.connect(pub) as c:
            wait_for(lambda: rn.nvmf_get_subsystems(c, "nqn.2016-06.io.phx:cli"), 10,
                     what="subsystem after restart")
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        drop_region(tmp_path / "state")   # the region outlives the supervisor on purpose
    run = subprocess.run([str(BIN), "status", "-s", pub], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3 and "no RPC socket" in run.stderr
    assert f"nvmf-phoenix supervise -s {pub}" in run.stderr
