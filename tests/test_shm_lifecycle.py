"""Shared memory with a life cycle: regions named for and recording their owner, a listing
of everything left with whether its owner lives, a clean-up that removes only orphans,
and `checkpoint drop` taking a state directory's region with it."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from nvmf_phoenix.persist import shm
from nvmf_phoenix.persist.shm_inventory import inventory
from nvmf_phoenix.recovery.store import (
    CheckpointStore,
    find_region,
    lock_state_dir,
    region_name,
)

from nvmf_phoenix.model import Subsystem, TargetState
from tests.phoenix_tools import drop_region, phoenix
from tests.transparent_target import transparent_target
from tests.waiting import wait_for


def _state(serial: str = "PHX1") -> TargetState:
    s = TargetState()
    s.subsystems["nqn.2016-06.io.spdk:x"] = Subsystem(nqn="nqn.2016-06.io.spdk:x",
                                                      serial_number=serial)
    return s


def _saved(state_dir: Path, shm_dir: Path | None, keep_open: bool = False
           ) -> CheckpointStore:
    store = CheckpointStore.for_state_dir(str(state_dir), region_dir=shm_dir and str(shm_dir))
    store.save(_state())
    if not keep_open:
        store.close()
    return store


def test_a_state_directory_region_is_named_for_it_and_records_it(tmp_path: Path) -> None:
    store = _saved(tmp_path / "my state", tmp_path / "shm")
    path = store.region_path()
    assert path is not None
    assert os.path.basename(path) == region_name(str(tmp_path / "my state")) + ".region"
    assert os.path.basename(path).startswith("state-my_state-")
    owner = shm.read_owner(path)
    shm.remove(path)
    assert owner is not None and owner["owner"] == str(tmp_path / "my state")
    assert owner["kind"] == shm.OWNER_STATE_DIR and owner["pid"] == os.getpid()
    assert shm.read_owner(path) is None         # removing a region forgets its owner


def test_a_region_under_the_old_name_is_renamed_and_still_loads(tmp_path: Path) -> None:
    state_dir, shm_dir = tmp_path / "state", tmp_path / "shm"
    legacy = f"supervisor-{shm.owner_tag(str(state_dir))}"
    old = CheckpointStore(str(state_dir), name=legacy, region_dir=str(shm_dir))
    old.save(_state("OLD1"))
    old.close()
    assert (shm_dir / f"{legacy}.region").exists()
    assert find_region(str(state_dir), str(shm_dir)) == str(shm_dir / f"{legacy}.region")
    store = CheckpointStore.for_state_dir(str(state_dir), region_dir=str(shm_dir))
    got = store.load()
    assert got.source == "shared memory" and got.state == _state("OLD1")
    assert not (shm_dir / f"{legacy}.region").exists()
    path = store.region_path()
    owner = shm.read_owner(path) if path else None
    store.region.unlink()
    assert owner is not None and owner["owner"] == str(state_dir)
    assert path and shm.read_owner(path) is None


def test_list_and_clean_remove_orphans_only(tmp_path: Path) -> None:
    root = tmp_path / "shm"
    live = _saved(tmp_path / "live", root)
    orphan = _saved(tmp_path / "gone", root)
    shutil.rmtree(tmp_path / "gone")
    # Its directory is gone but a process (this one) still maps it: alive.
    mapped = _saved(tmp_path / "mapped", root, keep_open=True)
    shutil.rmtree(tmp_path / "mapped")
    # Scratch directories: one claimed by a live process, one by a process now dead,
    # one with no record at all (an older version's).
    (root / "t-live").mkdir()
    (root / "t-live" / "config").write_bytes(b"x" * 100)
    shm.record_owner(str(root / "t-live"), "/run/live.sock", shm.OWNER_SOCKET)
    (root / "t-dead").mkdir()
    (root / "t-dead" / "conn-1").write_bytes(b"y" * 300)
    subprocess.run([sys.executable, "-c", "import sys; from nvmf_phoenix.persist import "
                    "shm; shm.record_owner(sys.argv[1], '/run/dead.sock', 'socket')",
                    str(root / "t-dead")], check=True, timeout=60)
    (root / "t-unknown").mkdir()
    try:
        rows = {os.path.basename(e.path): e for e in inventory(where=[str(root)])}
        by = {name: rows[name].alive for name in rows}
        assert by == {os.path.basename(p): a for p, a in (
            (live.region_path(), True), (orphan.region_path(), False),
            (mapped.region_path(), True), ("t-live", True), ("t-dead", False),
            ("t-unknown", None))}, by
        assert rows["t-dead"].size == 300 and rows["t-dead"].owner == "/run/dead.sock"
        assert "in use by pid" in rows[os.path.basename(str(mapped.region_path()))].why
        # Another process decides (it sees this one mapping a region).
        dry = phoenix("shm", "clean", "--root", str(root), "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert sorted(os.path.basename(e["path"]) for e in json.loads(dry.stdout)[
            "removed"]) == sorted([os.path.basename(str(orphan.region_path())), "t-dead"])
        assert (root / "t-dead").exists()           # a dry run removes nothing
        run = phoenix("shm", "clean", "--root", str(root), "--json")
        assert run.returncode == 0, run.stderr
        assert len(json.loads(run.stdout)["removed"]) == 2
        left = sorted(p.name for p in root.iterdir())
        assert "t-dead" not in left and shm.read_owner(str(root / "t-dead")) is None
        assert os.path.basename(str(orphan.region_path())) not in left
        assert {"t-live", "t-unknown"} <= set(left)
        assert live.region_path() and mapped.region_path()
        run = phoenix("shm", "clean", "--root", str(root), "--unknown", "--json")
        assert [os.path.basename(e["path"]) for e in json.loads(run.stdout)["removed"]] \
            == ["t-unknown"]
        listing = phoenix("shm", "list", "--root", str(root))
        assert listing.returncode == 0 and "ORPHAN" not in listing.stdout
        assert "state directory " + str(tmp_path / "live") in listing.stdout
        # Owner records are kept apart from what they describe: this root holds only
        # regions and scratch directories.
        assert not [p for p in root.iterdir() if not p.name.endswith(".region")
                    and not p.name.startswith("t-")]
    finally:
        mapped.close()
        for p in root.iterdir():              # and their owner records
            shm.remove(str(p))
        assert not [d for d in shm.owner_records() if d["path"].startswith(str(tmp_path))]


def test_checkpoint_drop_removes_the_region_with_the_directory(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    try:
        store = _saved(state_dir, None)      # where the CLI puts it: hugetlbfs or /dev/shm
        region = store.region_path()
        assert region and shm.read_owner(region) is not None
        fd = lock_state_dir(str(state_dir))  # a supervisor owns it: refused
        try:
            run = phoenix("checkpoint", "drop", "-d", str(state_dir))
            assert run.returncode == 1 and "in use" in run.stderr
            assert os.path.exists(region)
        finally:
            os.close(fd)
        run = phoenix("checkpoint", "drop", "-d", str(state_dir))
        assert run.returncode == 0, run.stderr
        assert f"removed {region}" in run.stdout and "freed" in run.stdout
        assert not state_dir.exists() and not os.path.exists(region)
        assert shm.read_owner(region) is None
        # A directory deleted by hand: its region is still found and dropped.
        _saved(state_dir, None)
        region = find_region(str(state_dir))
        shutil.rmtree(state_dir)
        run = phoenix("checkpoint", "drop", "--state-dir", str(state_dir), "--json")
        assert json.loads(run.stdout)["removed"] == [region] and region
        assert not os.path.exists(region)
    finally:
        drop_region(state_dir)


def test_a_crash_transparent_target_scratch_shows_its_socket_and_outlives_only_it(
        tmp_path: Path) -> None:
    with transparent_target(tmp_path) as t:
        t.configure()

        def mine() -> dict | None:
            run = phoenix("shm", "list", "--json")
            assert run.returncode == 0, run.stderr
            return next((e for e in json.loads(run.stdout) if e["owner"] == t.sock), None)
        entry = wait_for(mine, timeout=30, what="the target's scratch directory listed")
        assert entry is not None
        assert entry["alive"] is True and entry["kind"] == "scratch"
        assert entry["owner_kind"] == "socket" and entry["size"] > 64 << 20  # the RAM bdev
        # Killed together with its keeper, it is an orphan: shm clean would take it.
        workers = [t.status()["active"], *t.status()["standby"]]
        t.proc.send_signal(signal.SIGKILL)
        t.proc.wait(30)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        def orphaned() -> dict | None:
            e = mine()
            return e if e is not None and e["alive"] is False else None
        gone = wait_for(orphaned, timeout=30, what="the scratch directory to be orphaned")
        assert gone is not None and "gone" in gone["why"]
