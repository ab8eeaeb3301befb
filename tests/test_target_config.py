"""``nvmf-phoenix target -c FILE``: a file that cannot load is refused in one line.

Missing, unreadable, not JSON, or JSON that is not a save_config document: the target
prints one line on stderr and exits 1 (nvmf_tgt fails start-up too), before anything says
"ready" and before the RPC socket exists, with or without --crash-transparent. A file
that reads well but whose calls fail prints one line per failed call and exits 1, never
having said "ready", in both modes (crash-transparent: the first worker loads it, and the
keeper says "ready" only once that worked). A good file still loads in both modes.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nvmf_phoenix.rpc import RpcClient

from tests.target_fixture import NQN
from tests.transparent_target import transparent_target

BIN = Path(sys.executable).parent / "nvmf-phoenix"
MODES = [pytest.param([], id="plain"),
         pytest.param(["--crash-transparent"], id="crash-transparent")]


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the one line must say)."""
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    entry = {"subsystem": "nvmf", "config": [["nvmf_create_subsystem"]]}
    return {
        "missing": (tmp_path / "no-such.json", "No such file or directory"),
        # root reads a chmod 000 file anyway; a directory cannot be read by anyone
        "unreadable": (tmp_path, "Is a directory"),
        "not-json": (write("junk.json", "subsystems: [nvmf]\n"), "is not JSON"),
        "not-utf8": (_binary(tmp_path), "is not JSON"),
        "a-list": (write("list.json", "[]"), "the top level is a list, not an object"),
        "subsystems-object": (write("o.json", '{"subsystems": {"nvmf": []}}'),
                              '"subsystems" is an object, not a list'),
        "entry-list": (write("e.json", json.dumps({"subsystems": [entry]})),
                       'subsystems[0]["config"][0] is a list, not an object'),
    }


def _binary(tmp_path: Path) -> Path:
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\xfa{}")
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["missing", "unreadable", "not-json", "not-utf8", "a-list",
                                  "subsystems-object", "entry-list"])
def test_unusable_config_file_is_one_line_and_exit_1(tmp_path: Path, case: str,
                                                      mode: list[str]) -> None:
    path, says = _bad_files(tmp_path)[case]
    sock = tmp_path / "spdk.sock"
    run = subprocess.run([str(BIN), "target", "-r", str(sock), "-c", str(path), *mode],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nvmf-phoenix target: "), run.stderr
    assert says in lines[0] and str(path) in lines[0]
    assert "ready" not in run.stdout
    assert not sock.exists() and not Path(f"{sock}.keeper").exists()


@pytest.mark.parametrize("mode", MODES)
def test_failing_calls_are_one_line_each_and_exit_1(tmp_path: Path, mode: list[str]) -> None:
    """Valid JSON whose calls fail: a namespace on a bdev that does not exist, a
    subsystem made twice. The calls that work do not make it a success."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "nvmf", "config": [
        {"method": "nvmf_create_subsystem", "params": {"nqn": NQN}},
        {"method": "nvmf_subsystem_add_ns",
         "params": {"nqn": NQN, "namespace": {"bdev_name": "NoSuchBdev"}}},
        {"method": "nvmf_create_subsystem", "params": {"nqn": NQN}}]}]}))
    sock = tmp_path / "spdk.sock"
    run = subprocess.run([str(BIN), "target", "-r", str(sock), "-c", str(cfg), *mode],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("config error: ") for line in lines), \
        run.stderr
    assert lines[0].startswith("config error: nvmf_subsystem_add_ns ")
    assert "NoSuchBdev" in lines[0]
    assert lines[1].startswith("config error: nvmf_create_subsystem ")
    assert "ready" not in run.stdout, run.stdout
    assert not sock.exists() and not Path(f"{sock}.keeper").exists()


@pytest.mark.parametrize("mode", MODES)
def test_a_good_config_file_still_loads(tmp_path: Path, mode: list[str]) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create",
             "params": {"name": "Malloc0", "num_blocks": 256, "block_size": 512}}]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_subsystem",
             "params": {"nqn": NQN, "serial_number": "PHXCFG1"}}]}]}))
    if mode:
        with transparent_target(tmp_path, "-c", str(cfg)) as t, t.rpc() as c:
            subs = c.call("nvmf_get_subsystems")
            # said once the first worker had loaded it, and only then
            assert "nvmf-phoenix target ready" in t.log_path.read_text()
    else:
        sock = tmp_path / "spdk.sock"
        proc = subprocess.Popen([str(BIN), "target", "-r", str(sock), "-c", str(cfg)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert "ready" in proc.stdout.readline()
            with RpcClient.connect(str(sock)) as c:
                subs = c.call("nvmf_get_subsystems")
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0
    assert [s["serial_number"] for s in subs if s["nqn"] == NQN] == ["PHXCFG1"]


def test_the_keeper_does_not_load_the_target() -> None:
    """app.py is the socket keeper's main too: importing it must not load the target."""
    probe = ("import sys, nvmf_phoenix.embedded.app; "
             "print(' '.join(m for m in sys.modules if m.startswith('nvmf_phoenix')))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)
    loaded = set(run.stdout.split())
    assert "nvmf_phoenix.embedded.keeper" in loaded
    target = {"nvmf_phoenix.embedded.io_loop", "nvmf_phoenix.embedded.qpair",
              "nvmf_phoenix.embedded.rpc_methods", "nvmf_phoenix.embedded.config_store",
              "nvmf_phoenix.embedded.plain", "nvmf_phoenix.embedded.worker"}
    assert not loaded & target, loaded & target
