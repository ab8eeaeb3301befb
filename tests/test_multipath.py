"""The project's initiator does what a Linux host does with NVMe multipath and ANA.

Two real embedded target processes on loopback serve one file as a hot-standby pair
(tests/ana_pair.py): A's listener optimized, B's non-optimized, each discovery service
referring to the other. The host finds both paths through one discovery address, sends
I/O on the optimized path only, moves to the standby at once when A is SIGKILLed (no
errors, no mismatches), follows ANA changes announced by Asynchronous Events, and brings
a restarted target back as a live path in the background. The path choice itself is
tested without sockets.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.discovery import discover_all
from nvmf_phoenix.initiator.mpworkload import MultipathWorkload
from nvmf_phoenix.initiator.multipath import MultipathHost
from nvmf_phoenix.initiator.paths import NsIdentity, PathIdentityError, PathTable, ana_states
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn
from nvmf_phoenix.wire import nvme

from tests.ana_pair import BLOCK_SIZE, NQN, UUID, Member, make_pair
from tests.target_process import TARGET_KINDS
from tests.waiting import wait_for

BLOCKS = 1024
UUID2 = "6e767068-7061-6972-8000-000000000002"
NGUID2 = "6E76706870616972800000000000000B"


# -- the pure part ---------------------------------------------------------------------
def _table() -> PathTable:
    t = PathTable("nqn.x")
    ident = {1: NsIdentity(nguid="AB" * 16)}
    for port, cntlid, state in ((4420, 1, "optimized"), (4421, 32768, "non_optimized")):
        path = t.add("127.0.0.1", port)
        t.check(path.name, "nqn.x", cntlid, ident)
        t.up(path.name, cntlid, ident, {1: state})
    return t


def _use(t: PathTable, nsid: int, exclude: list[str] | None = None) -> str | None:
    path = t.choose(nsid, exclude or [])
    return path.name if path is not None else None


def test_choice_prefers_optimized_then_non_optimized_never_inaccessible() -> None:
    t = _table()
    a, b = "127.0.0.1:4420", "127.0.0.1:4421"
    assert _use(t, 1) == a
    t.down(a, "connection closed")
    assert _use(t, 1) == b
    assert (t.failovers, t.path_changes) == (1, 1)
    t.set_ana(b, {1: "inaccessible"})
    assert t.choose(1) is None and not t.any_usable(1)
    for state in ("persistent_loss", "change"):
        t.set_ana(b, {1: state})
        assert t.choose(1) is None
    t.set_ana(b, {1: "optimized"})
    assert _use(t, 1) == b
    # A back non-optimized: B stays in use; a non-optimized current path gives way to
    # an optimized one, and that is a change of path, not a failover
    t.up(a, 1, {1: NsIdentity(nguid="AB" * 16)}, {1: "non_optimized"})
    assert _use(t, 1) == b
    t.set_ana(b, {1: "non_optimized"})
    t.set_ana(a, {1: "optimized"})
    assert _use(t, 1) == a
    assert (t.failovers, t.path_changes) == (1, 2)
    # an ANA error on a path disables it for that namespace until its log is re-read
    t.ana_error(a, 1)
    assert _use(t, 1) == b
    t.set_ana(a, {1: "optimized"})
    assert _use(t, 1) == a
    assert _use(t, 1, [a]) == b
    assert t.choose(2) is None                         # a namespace no path reports


def test_paths_join_only_with_the_same_identity_and_a_new_cntlid() -> None:
    t = _table()
    c = t.add("127.0.0.1", 4422).name
    same = {1: NsIdentity(nguid="AB" * 16)}
    with pytest.raises(PathIdentityError, match="duplicate cntlid 32768"):
        t.check(c, "nqn.x", 32768, same)
    with pytest.raises(PathIdentityError, match="IDs do not match"):
        t.check(c, "nqn.x", 5, {1: NsIdentity(nguid="CD" * 16)})
    with pytest.raises(PathIdentityError, match="is not"):
        t.check(c, "nqn.other", 5, same)
    with pytest.raises(PathIdentityError, match="no unique identifier"):
        t.check(c, "nqn.x", 5, {2: NsIdentity(nguid="0" * 32, eui64="0" * 16)})
    t.check(c, "nqn.x", 5, {**same, 2: NsIdentity(uuid=UUID)})
    # a cntlid of a path that is down may come back (the same controller reconnecting)
    t.down("127.0.0.1:4421", "gone")
    t.check(c, "nqn.x", 32768, same)


def test_ana_states_from_the_log() -> None:
    page = nvme.ana_log(7, [(1, nvme.ANA_STATE_CODES["optimized"], [1, 3]),
                            (2, nvme.ANA_STATE_CODES["change"], [2])])
    groups = nvme.parse_ana_log(page)[1]
    assert ana_states(groups, {1: 1, 2: 2, 3: 1, 4: 9}) == {
        1: "optimized", 2: "change", 3: "optimized", 4: "inaccessible"}
    rgo = nvme.parse_ana_log(nvme.ana_log(7, [(2, 2, [2])], rgo=True))[1]
    assert ana_states(rgo, {2: 2}) == {2: "non_optimized"}


# -- real targets ----------------------------------------------------------------------
@pytest.fixture(params=TARGET_KINDS)
def pair(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Member, Member, Path]]:
    a, b, image = make_pair(tmp_path, BLOCKS, kind=request.param)
    try:
        yield a, b, image
    finally:
        a.stop()
        b.stop()


def _path(mp: MultipathHost, member: Member) -> dict[str, object]:
    return next(p for p in mp.paths() if p["address"] == f"127.0.0.1:{member.port}")


def _ana(mp: MultipathHost, member: Member) -> dict[int, str]:
    ana = _path(mp, member)["ana"]
    assert isinstance(ana, dict)
    return ana


def test_discovery_follows_referrals_to_both_paths(pair: tuple[Member, Member, Path]) -> None:
    a, b, _ = pair
    found = discover_all("127.0.0.1", a.disc_port)
    assert sorted(found.visited) == sorted(f"127.0.0.1:{m.disc_port}" for m in (a, b))
    assert sorted((e.trsvcid, e.subnqn) for e in found.entries) == sorted(
        (str(m.port), NQN) for m in (a, b))
    assert not found.unreachable
    # the referrals point at each other: each service is read once, and a bound holds
    assert len(discover_all("127.0.0.1", b.disc_port, max_services=1).visited) == 1


def test_io_goes_to_the_optimized_path_only(pair: tuple[Member, Member, Path]) -> None:
    a, b, _ = pair
    with MultipathHost.from_discovery("127.0.0.1", b.disc_port) as mp:
        by_port = {p["address"]: p for p in mp.paths()}
        assert by_port[f"127.0.0.1:{a.port}"]["cntlid"] == 1
        assert by_port[f"127.0.0.1:{b.port}"]["cntlid"] == 32768
        data = bytes(range(256)) * (BLOCK_SIZE // 256)
        mp.write(1, 7, data, BLOCK_SIZE)
        assert mp.read(1, 7, 1, BLOCK_SIZE) == data
        mp.flush(1)
        assert (_path(mp, a)["sent"], _path(mp, b)["sent"]) == (3, 0)
        assert _path(mp, a)["ana"] == {1: "optimized"}
        assert _path(mp, b)["ana"] == {1: "non_optimized"}
        assert mp.counters()["failovers"] == 0


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_duplicate_cntlid_is_refused(tmp_path: Path, kind: str) -> None:
    a, b, _ = make_pair(tmp_path, BLOCKS, kind=kind, same_cntlids=True)
    try:
        with MultipathHost.from_discovery("127.0.0.1", a.disc_port,
                                          reconnect_delay=60) as mp:
            refused = _path(mp, b)
            assert not refused["live"] and "duplicate cntlid 1" in str(refused["error"])
            assert _path(mp, a)["live"]
    finally:
        a.stop()
        b.stop()


def test_ana_change_is_followed_through_events(pair: tuple[Member, Member, Path]) -> None:
    a, b, _ = pair
    with MultipathHost.from_discovery("127.0.0.1", a.disc_port) as mp:
        a.set_ana("non_optimized")
        b.set_ana("optimized")
        wait_for(lambda: _path(mp, b)["ana"] == {1: "optimized"}
                 and _path(mp, a)["ana"] == {1: "non_optimized"}, timeout=10,
                 what="the host to learn both ANA changes from events")
        assert mp.counters()["ana_events"] >= 2
        wl = MultipathWorkload(mp, 1, BLOCK_SIZE, BLOCKS, qd=8, seed=1)
        wl.run(0.5)
        b_sent = _path(mp, b)["sent"]
        assert _path(mp, a)["sent"] == 0 and b_sent
        # B inaccessible: I/O goes back to non-optimized A, with no path failure
        b.set_ana("inaccessible")
        wait_for(lambda: wl.step(0.05) or _path(mp, a)["sent"], timeout=10,
                 what="I/O to move to A")
        wl.run(0.3)
        wl.drain()
        assert not wl.stats.errors and not wl.stats.mismatches
        assert mp.counters()["path_failures"] == 0
        assert all(p["live"] for p in mp.paths())


def test_sigkill_of_the_active_moves_io_and_the_path_comes_back(
        tmp_path: Path, pair: tuple[Member, Member, Path]) -> None:
    a, b, image = pair
    with MultipathHost.from_discovery("127.0.0.1", a.disc_port,
                                      reconnect_delay=0.5) as mp:
        wl = MultipathWorkload(mp, 1, BLOCK_SIZE, BLOCKS, qd=8, seed=2)
        stop = threading.Event()
        worker = threading.Thread(target=lambda: (wl.run(120, stop.is_set), wl.drain()))
        worker.start()
        try:
            wait_for(lambda: wl.stats.completed > 300, timeout=20, what="I/O on A")
            assert _path(mp, b)["sent"] == 0
            a.kill()
            b.set_ana("optimized")        # what the supervisor does on failover
            moved = wl.stats.completed
            wait_for(lambda: wl.stats.completed > moved + 300, timeout=20,
                     what="I/O to go on over B")
            assert not _path(mp, a)["live"]
            # while A is away the host tries it every reconnect_delay, not more often
            tries, away = _path(mp, a)["attempts"], time.monotonic()
            wait_for(lambda: int(str(_path(mp, a)["attempts"])) >= int(str(tries)) + 2,
                     timeout=5, what="two reconnect attempts")
            assert time.monotonic() - away >= 0.5
            # A restarted as the standby: inaccessible until configured, then
            # non-optimized; the host reconnects it in the background
            a.start(tmp_path, image, b.disc_port, "inaccessible", generation=1)
            a.set_ana("non_optimized")
            wait_for(lambda: _path(mp, a)["live"]
                     and _path(mp, a)["ana"] == {1: "non_optimized"}, timeout=15,
                     what="the restarted target to be a live path again")
            a_sent = _path(mp, a)["sent"]
            done = wl.stats.completed
            wait_for(lambda: wl.stats.completed > done + 200, timeout=20,
                     what="more I/O after the path came back")
            assert _path(mp, a)["sent"] == a_sent     # the standby carries no I/O
        finally:
            stop.set()
            worker.join(timeout=90)
        assert not worker.is_alive()
        report = wl.report()
        assert report["errors"] == 0 and report["mismatches"] == 0, wl.stats.errors
        assert int(str(report["failovers"])) >= 1 and int(str(report["path_failures"])) == 1
        assert wl.worst_latency() < 2.0, report
        assert wl.verify_all(lambda lba, n: mp.read(1, lba, n, BLOCK_SIZE)) == []
        print(report)


def test_namespaces_added_later_are_learnt_and_a_mismatch_refused(
        tmp_path: Path, pair: tuple[Member, Member, Path]) -> None:
    a, b, _ = pair
    image = tmp_path / "ns2.img"
    with image.open("wb") as f:
        f.truncate(256 * BLOCK_SIZE)
    with MultipathHost.from_discovery("127.0.0.1", a.disc_port, reconnect_delay=60) as mp:
        for m in (a, b):
            rb.bdev_aio_create(m.rpc(), str(image), "D1", block_size=BLOCK_SIZE, uuid=UUID2)
            rn.nvmf_subsystem_add_ns(m.rpc(), NQN, "D1", nsid=2, uuid=UUID2,
                                     nguid=NGUID2)
        wait_for(lambda: _path(mp, a)["ana"] == {1: "optimized", 2: "optimized"}
                 and _path(mp, b)["ana"] == {1: "non_optimized", 2: "non_optimized"},
                 timeout=10, what="both paths to report namespace 2")
        data = bytes([7]) * BLOCK_SIZE
        mp.write(2, 3, data, BLOCK_SIZE)
        assert mp.read(2, 3, 1, BLOCK_SIZE) == data
        # namespace 3 with other identities on B than on A: B may not stay a path
        for m, nguid in ((a, "00" * 15 + "31"), (b, "00" * 15 + "32")):
            rb.bdev_malloc_create(m.rpc(), 64, BLOCK_SIZE, name="M3")
            rn.nvmf_subsystem_add_ns(m.rpc(), NQN, "M3", nsid=3, nguid=nguid)
            if m is a:
                wait_for(lambda: 3 in _ana(mp, a), timeout=10,
                         what="A to report namespace 3")
        wait_for(lambda: not _path(mp, b)["live"], timeout=10, what="B refused")
        assert "IDs do not match" in str(_path(mp, b)["error"])
        assert _path(mp, a)["live"] and mp.read(2, 3, 1, BLOCK_SIZE) == data
