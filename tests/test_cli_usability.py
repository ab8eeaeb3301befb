"""Small things a new user trips on (issue 19, item 7): the PID to kill in `status`, no
takeover or death-to-ready figures before anything died, -d as well as --state-dir,
usage errors that exit 2, `supervise --help` that documents every option."""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest
from nvmf_phoenix.plugin.cli import build_parser
from nvmf_phoenix.plugin.cli_checkpoint import human_status

from tests.phoenix_tools import BIN, phoenix
from tests.waiting import wait_for


def test_address_that_is_no_address_is_a_usage_error() -> None:
    for args in (("check", "notanip"), ("add", "10.0.0.1/xx", "--dev", "lo"),
                 ("del", "300.1.1.1")):
        run = phoenix("address", *args)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert "not an IP address" in run.stderr


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["supervise", "io"])
def test_every_option_says_what_it_does_and_its_default(
        command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")       # no line breaks inside a default
    parser = _subparser(command)
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        if action.default not in (None, False):
            # The default appears in the help, as help renders it.
            assert f"default: {action.default}" in text, \
                f"{command} {action.option_strings[0]}: default not shown"


def test_state_dir_has_a_short_option_everywhere(tmp_path: Path) -> None:
    run = phoenix("checkpoint", "show", "-d", str(tmp_path / "none"))
    assert run.returncode == 4 and str(tmp_path / "none") in run.stderr
    for command in ("supervise", "status", "restore", "metrics"):
        opts = {s for a in _subparser(command)._actions for s in a.option_strings}
        assert {"-d", "--state-dir"} <= opts, command


def test_status_names_the_target_pid(tmp_path: Path) -> None:
    sock = str(tmp_path / "t.sock")
    proc = subprocess.Popen([str(BIN / "nvmf-phoenix"), "target", "-r", sock],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: phoenix("status", "-s", sock, "--pid").returncode == 0,
                 timeout=30, what="the target's socket")
        run = phoenix("status", "-s", sock, "--pid")
        assert run.stdout.strip() == str(proc.pid)
        run = phoenix("status", "-s", sock, "-d", str(tmp_path / "state"), "--json")
        doc = json.loads(run.stdout)
        assert doc["target"]["pid"] == proc.pid and doc["kill_pid"] == proc.pid
        run = phoenix("status", "-s", sock, "-d", str(tmp_path / "state"))
        assert f"pid {proc.pid}" in run.stdout and f"kill -9 {proc.pid}" in run.stdout
    finally:
        proc.terminate()
        proc.wait(30)


def _status(restarts: int, takeovers: int | None) -> dict:
    sup = {"state": "ready", "restarts": restarts, "last_restore_s": 0.12,
           "last_death_to_ready_s": 0.34 if restarts else 0.0, "last_error": ""}
    keeper = None if takeovers is None else {
        "active": 11, "standby": [12], "takeovers": takeovers, "connections": 0}
    return {"supervisor": sup, "keeper": keeper, "checkpoint": None, "state_dir": "/x",
            "target": {"socket": "/s", "version": "v", "phase": "running",
                       "subsystems": 0, "pid": 10}, "kill_pid": 11}


def test_status_counts_only_what_happened() -> None:
    text = human_status(_status(0, 1))
    assert "0 restarts" in text and "death to ready" not in text
    assert "0 takeovers" in text            # handing the first worker over is none
    assert "checkpoint: none needed" in text
    text = human_status(_status(1, 3))
    assert "1 restart," in text and "death to ready 0.34 s" in text
    assert "2 takeovers" in text
