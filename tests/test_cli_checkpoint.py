"""`nvmf-phoenix target|checkpoint|restore|status`, run as a user runs them."""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvmf_phoenix.recovery.supervisor import Supervisor
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from tests.phoenix_tools import BIN, drop_region, phoenix
from tests.target_fixture import free_port
from tests.target_process import TargetProcess

NQN = "nqn.2016-06.io.phx:cli1"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[str]:
    d = str(tmp_path / "state")
    yield d
    drop_region(d)


def build(sock: str, port: int, subsystems: int = 1) -> None:
    with RpcClient.connect(sock) as c:
        rn.nvmf_create_transport(c, "TCP")
        for i in range(subsystems):
            nqn = f"{NQN}-{i}"
            rb.bdev_malloc_create(c, 64, 512, name=f"M{i}",
                                  uuid=f"aaaaaaaa-0000-4000-8000-{i:012d}")
            rn.nvmf_create_subsystem(c, nqn, serial_number=f"CLI{i:04d}", allow_any_host=True)
            rn.nvmf_subsystem_add_ns(c, nqn, f"M{i}")
            rn.nvmf_subsystem_add_listener(c, nqn, rn.listen_address("127.0.0.1", port))


def test_target_command_passes_nvmf_tgt_flags_through(tmp_path: Path) -> None:
    sock = str(tmp_path / "t.sock")
    proc = subprocess.Popen([str(BIN / "nvmf-phoenix"), "target", "-r", sock,
                             "--wait-for-rpc", "-m", "0x1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert "phase=startup" in proc.stdout.readline()
        with RpcClient.connect(sock) as c:
            assert "framework_start_init" in c.call("rpc_get_methods", {"current": True})
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_checkpoint_export_import_restore_round_trip(tmp_path: Path, state: str) -> None:
    sock, port = str(tmp_path / "a.sock"), free_port()
    run = phoenix("checkpoint", "show", "--state-dir", state)
    assert run.returncode == 4 and "checkpoint now" in run.stderr
    run = phoenix("checkpoint", "now", "-s", sock, "--state-dir", state)
    assert run.returncode == 3 and f"nvmf-phoenix target -r {sock}" in run.stderr
    tp = TargetProcess(sock)
    try:
        build(sock, port, subsystems=20)
        run = phoenix("checkpoint", "now", "-s", sock, "--state-dir", state, "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["summary"]["subsystems"] == 20
        run = phoenix("checkpoint", "show", "--state-dir", state)
        assert run.returncode == 0 and "20 subsystems" in run.stdout
        export = str(tmp_path / "ck.json")
        assert phoenix("checkpoint", "export", export, "--state-dir", state).returncode == 0
        with RpcClient.connect(sock) as c:
            rn.nvmf_delete_subsystem(c, f"{NQN}-7")
        run = phoenix("checkpoint", "diff", "-s", sock, "--state-dir", state, "--json")
        assert run.returncode == 1
        assert any(f"{NQN}-7" in d for d in json.loads(run.stdout)["differences"])
    finally:
        tp.stop()
    # Import into another state directory and restore from there into a new target.
    other = str(tmp_path / "other")
    try:
        run = phoenix("checkpoint", "import", export, "--state-dir", other, "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["summary"]["subsystems"] == 20
        sock2 = str(tmp_path / "b.sock")
        tp = TargetProcess(sock2, "--wait-for-rpc")
        try:
            run = phoenix("restore", "-s", sock2, "--state-dir", other, "--json")
            assert run.returncode == 0, run.stderr
            result = json.loads(run.stdout)
            assert result["ok"] and result["done"] == result["calls"] > 40
            # Progress: one line per stage on stderr, the last one counting every call.
            stages = [ln for ln in run.stderr.splitlines() if ln.startswith("restore: ")
                      and " calls " in ln]
            assert [s.split()[1] for s in stages][:3] == ["startup", "init", "bdevs"]
            assert stages[-1].split()[2] == f"{result['calls']}/{result['calls']}"
            run = phoenix("checkpoint", "diff", "-s", sock2, "--state-dir", other)
            assert run.returncode == 0 and "matches" in run.stdout
            run = phoenix("status", "-s", sock2, "--state-dir", other, "--json")
            assert run.returncode == 0, run.stderr
            status = json.loads(run.stdout)
            assert status["supervisor"] is None and status["target"]["subsystems"] == 20
            assert status["checkpoint"]["seq"] == 1
        finally:
            tp.stop()
        # --from restores an exported file directly, and garbage is refused clearly.
        bad = tmp_path / "bad.json"
        bad.write_text('{"subsystems": []}')
        run = phoenix("restore", "-s", sock2, "--from", str(bad))
        assert run.returncode == 1 and "save_config" in run.stderr
    finally:
        drop_region(other)


def test_listener_address_missing_stops_restore_with_advice(tmp_path: Path,
                                                           state: str) -> None:
    export = tmp_path / "ck.json"
    sock, port = str(tmp_path / "a.sock"), free_port()
    tp = TargetProcess(sock)
    try:
        build(sock, port)
        assert phoenix("checkpoint", "now", "-s", sock, "--state-dir", state).returncode == 0
        assert phoenix("checkpoint", "export", str(export), "--state-dir", state
                       ).returncode == 0
    finally:
        tp.stop()
    doc = json.loads(export.read_text())
    for sub in doc["state"]["subsystems"]:
        for ls in sub["listeners"].values() if isinstance(sub["listeners"], dict) \
                else sub["listeners"]:
            ls["address"]["traddr"] = "192.0.2.203"
    export.write_text(json.dumps(doc))
    run = phoenix("restore", "-s", sock, "--from", str(export))
    assert run.returncode == 1
    assert "192.0.2.203 is on no interface" in run.stderr and "--floating-dev" in run.stderr


def test_state_dir_has_one_writer(tmp_path: Path, state: str) -> None:
    """A supervisor owns its state directory: a CLI checkpoint into it is refused."""
    sup = Supervisor([str(BIN / "python"), "-m", "nvmf_phoenix.embedded"],
                     str(tmp_path / "priv.sock"), str(tmp_path / "pub.sock"), state)
    sup.start()
    try:
        run = phoenix("checkpoint", "now", "-s", str(tmp_path / "priv.sock"),
                      "--state-dir", state)
        assert run.returncode == 1 and "in use by another nvmf-phoenix" in run.stderr
        run = phoenix("checkpoint", "show", "--state-dir", state, "--json")   # reading is fine
        assert run.returncode == 0 and json.loads(run.stdout)["source"] == "shared memory"
    finally:
        sup.stop()
    run = phoenix("checkpoint", "now", "-s", str(tmp_path / "pub.sock"), "--state-dir", state)
    assert run.returncode == 3


def test_usage_and_help(tmp_path: Path) -> None:
    run = phoenix("--help")
    assert run.returncode == 0 and "exit codes" in run.stdout
    run = phoenix("checkpoint")
    assert run.returncode == 2
    run = phoenix("restore", "--wait-hosts", "soon")
    assert run.returncode == 2 and "invalid float" in run.stderr
    run = phoenix("target", "--help")
    assert run.returncode == 0 and "--wait-for-rpc" in run.stdout
    env = {**os.environ, "NVMF_PHOENIX_STATE_DIR": str(tmp_path / "envdir")}
    run = phoenix("checkpoint", "show", env=env)
    assert run.returncode == 4 and str(tmp_path / "envdir") in run.stderr
