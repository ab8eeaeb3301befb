"""The README's two commands are the project's promise to a new user: keep them true."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_two_commands() -> None:
    run, test = readme_commands()
    assert run.startswith("python3 -m venv .venv") and "nvmf-phoenix demo" in run
    assert "pytest" in test


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in [line.strip() for line in ci]


def _run_section(heading: str, tmp_path: Path, extra: dict[str, str] | None = None) -> str:
    """Run a README section's shell block as written, with its /tmp/phx paths moved into
    the test's own directory (and any ``extra`` replacements, e.g. a free port)."""
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, heading
    script = block.group(1).replace("/tmp/phx", str(tmp_path / "phx"))
    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    for old, new in (extra or {}).items():
        script = script.replace(old, new)
    # Whatever happens, nothing the block started in the background outlives it.
    script = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    run = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_readme_by_hand_section_runs_as_written(tmp_path: Path) -> None:
    from tests.phoenix_tools import drop_region
    from tests.target_fixture import free_port

    try:
        out = _run_section("## Checkpoint and restore by hand", tmp_path,
                           {"4420": str(free_port())})
    finally:
        drop_region(tmp_path / "phx-state")
    # 9 modelled calls, and the option sections the target reported as nvmf_tgt does
    # (scheduler, sock, iobuf, accel, bdev), replayed verbatim
    assert "restore complete: 20 of 20 calls" in out and "live target matches" in out
    assert "replayed verbatim (not modelled): bdev_set_options" in out


def test_readme_supervised_section_runs_as_written(tmp_path: Path) -> None:
    from tests.phoenix_tools import drop_region
    from tests.target_fixture import free_port

    try:
        out = _run_section("## Supervised, with Prometheus metrics", tmp_path,
                           {"9556": str(free_port()), "4421": str(free_port())})
    finally:
        drop_region(tmp_path / "phx-sup-state")
    # The kill -9 and the planned restart.
    assert "nvmf_phoenix_restarts_total 2.0" in out and "supervisor: ready" in out
    assert re.search(r"0 errors, 0 mismatches, 1 reconnects, longest stall [\d.]+ ms", out), out


def test_readme_crash_transparent_section_runs_as_written(tmp_path: Path) -> None:
    from tests.target_fixture import free_port

    out = _run_section("## Crash-transparent target", tmp_path, {"4420": str(free_port())})
    assert "crash-transparent: worker" in out and "standby" in out
    assert re.search(r"0 errors, 0 mismatches, 0 reconnects, longest stall [\d.]+ ms", out), out


def test_readme_pair_section_runs_as_written(tmp_path: Path) -> None:
    from tests.phoenix_tools import drop_region
    from tests.target_fixture import free_port

    try:
        out = _run_section("## Hot-standby pair", tmp_path,
                           {"4430": str(free_port()), "8019": str(free_port())})
    finally:
        drop_region(tmp_path / "phx-pair-state")
    assert "pair: target a active, standby ready, 0 failovers" in out
    assert re.search(r"0 errors, 0 mismatches \(0 on read-back\); [1-9]\d* path failovers",
                     out), out
    assert "2 failovers" in out, out


def test_readme_shared_memory_section_runs_as_written(tmp_path: Path) -> None:
    out = _run_section("## Where the bytes live", tmp_path)
    assert "would remove" in out


def test_readme_cluster_section_names_real_options() -> None:
    """The cluster section needs an etcd cluster and several machines, so it is not run
    (tests/test_cluster_core.py and tests/test_cluster_floating.py run clusters); its
    commands must still parse with the real command line, every option as written."""
    import shlex

    from nvmf_phoenix.plugin.cli import build_parser

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## A cluster of nodes"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line for line in block.group(1).replace("\\\n", " ").splitlines()
                if line.startswith("nvmf-phoenix ")]
    assert [c.split()[1] for c in commands] == ["supervise", "cluster"]
    parsed = [build_parser().parse_args(shlex.split(c)[1:]) for c in commands]
    assert parsed[0].node == "n1" and parsed[0].floating_dev == "eth0"
    assert parsed[1].cluster_command == "status"
