"""Corruption: random damage to the region, journal and snapshot; a supervisor started on
a damaged state directory; restores that cannot complete.

tests/test_persistence.py has the formats' own damage cases (magic, version, header CRC,
a torn tail, single bit flips in a slot); here damage is random and repeated, and the
whole path up to a running supervisor is checked. benchmarks/corrupt_store.py runs the
trials by the ten thousand.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.persist.region import SLOT_HDR_SIZE, Region
from nvmf_phoenix.recovery.journal import KIND_STATE, Journal, read_journal
from nvmf_phoenix.recovery.supervisor import Supervisor
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from tests.corruption import open_store, run_trial, state
from tests.phoenix_tools import drop_region
from tests.support import EMBEDDED, supervised
from tests.waiting import wait_for

PUBLIC = "public.sock"


@pytest.mark.slow
def test_random_damage_is_detected_and_never_restored_wrongly() -> None:
    rng = random.Random(2026)
    base = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        trials = [run_trial(Path(base) / "t", rng) for _ in range(300)]
    finally:
        subprocess.run(["rm", "-rf", base], check=False)
    failures = [(t.injuries, f) for t in trials for f in t.failures]
    assert failures == []
    assert sum(1 for t in trials if t.problems) > 200          # damage was reported
    assert {t.source for t in trials} >= {"shared memory", "journal"}   # and fallen back


def test_a_damaged_record_does_not_hide_newer_ones(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    j = Journal(path)
    offsets = []
    for i in range(5):
        offsets.append(j.size())
        j.append(KIND_STATE, f"record {i}".encode(), sync=True)
    j.close()
    raw = bytearray(Path(path).read_bytes())
    raw[offsets[1] + 25] ^= 0x40                 # inside record 1's payload
    Path(path).write_bytes(bytes(raw))
    res = read_journal(path)
    assert [r.payload for r in res.records] == [b"record 0", b"record 2", b"record 3",
                                                b"record 4"]
    assert res.problem and "CRC mismatch" in res.problem and "skipped" in res.problem
    j = Journal(path)                            # reopened: rewritten without record 1
    assert j.last_seq == 5 and j.problem
    j.append(KIND_STATE, b"record 5", sync=True)
    j.close()
    again = read_journal(path)
    assert again.problem is None and [r.seq for r in again.records] == [1, 3, 4, 5, 6]


def test_a_journal_with_an_unreadable_header_is_moved_aside(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.save(state(1))
    store.close()
    journal = Path(store.journal_path)
    journal.write_bytes(b"garbage!" + journal.read_bytes()[8:])
    again = open_store(tmp_path)
    seq = again.save(state(2))                   # once this raised JournalError forever
    again.close()
    assert seq == 2 and open_store(tmp_path).load().state == state(2)
    aside = [p.name for p in journal.parent.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1                       # kept for whoever investigates


def _configure(c: RpcClient, image: Path | None = None) -> None:
    rn.nvmf_create_transport(c, "TCP")
    rb.bdev_malloc_create(c, 64, 512, name="M0", uuid="aaaaaaaa-0000-4000-8000-00000000c0de")
    rn.nvmf_create_subsystem(c, "nqn.2016-06.io.phx:keep", serial_number="KEEP1")
    rn.nvmf_subsystem_add_ns(c, "nqn.2016-06.io.phx:keep", "M0")
    if image is not None:
        rb.bdev_aio_create(c, str(image), "A0", block_size=512)
        rn.nvmf_subsystem_add_ns(c, "nqn.2016-06.io.phx:keep", "A0")


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


DAMAGE = {
    # both slots of the region: shared memory unusable, the journal has it all
    "region": ("journal", True),
    # the node rebooted (region gone), journal header zeroed, snapshot garbage
    "journal+region": ("none", False),
    # every file overwritten with random bytes
    "everything": ("none", False),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_supervisor_on_a_damaged_state_dir_comes_up_and_reports(tmp_path: Path,
                                                                 damage: str) -> None:
    first = Supervisor(EMBEDDED, str(tmp_path / "private.sock"), str(tmp_path / PUBLIC),
                       str(tmp_path / "state"))
    first.start()
    with RpcClient.connect(str(tmp_path / PUBLIC)) as c:
        _configure(c)
    first.stop()
    region = Region.open(first.store.region_path() or "")
    journal, snapshot = Path(first.store.journal_path), Path(first.store.snapshot_path)
    rng = random.Random(damage)
    if damage == "region":
        for off in region.slots:
            region.mm[off + SLOT_HDR_SIZE + 7] ^= 0xFF
        region.close()
    elif damage == "journal+region":
        region.close()
        region.unlink()
        journal.write_bytes(bytes(16) + journal.read_bytes()[16:])
        snapshot.write_bytes(rng.randbytes(200))
    else:
        region.mm[:] = rng.randbytes(len(region.mm))
        region.close()
        for p in (journal, snapshot):
            p.write_bytes(rng.randbytes(rng.randrange(1, 5000)))
    source, complete = DAMAGE[damage]
    with supervised(tmp_path) as sup, RpcClient.connect(str(tmp_path / PUBLIC)) as c:
        status = c.call("phoenix_status")
        assert status["state"] == "ready" and status["restarts"] == 0
        ckpt = status["checkpoint"]
        assert ckpt["source"] == source and ckpt["problems"], ckpt   # said, not swallowed
        subs = [s["nqn"] for s in rn.nvmf_get_subsystems(c)]
        assert ("nqn.2016-06.io.phx:keep" in subs) == complete
        if complete:
            ns = rn.nvmf_get_subsystems(c, "nqn.2016-06.io.phx:keep")[0]["namespaces"]
            assert ns[0]["uuid"] == "aaaaaaaa-0000-4000-8000-00000000c0de"
        rn.nvmf_create_subsystem(c, "nqn.2016-06.io.phx:after")   # saving works again
        assert (st := sup.store.load().state) is not None and \
            "nqn.2016-06.io.phx:after" in st.subsystems


BIN = Path(sys.executable).parent / "nvmf-phoenix"


def test_cli_supervisor_on_a_garbage_state_dir_stays_up(tmp_path: Path) -> None:
    """The supervise command, as a service manager runs it: a state directory of garbage
    must not make it exit (a service manager would restart it forever)."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    for name in ("journal", "snapshot"):
        (state_dir / name).write_bytes(os.urandom(3000))
    pub = str(tmp_path / "pub.sock")
    proc = subprocess.Popen([str(BIN), "supervise", "-s", pub, "--target-socket",
                             str(tmp_path / "priv.sock"), "--state-dir", str(state_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def status() -> dict[str, Any]:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            run = subprocess.run([str(BIN), "status", "--json", "-s", pub],
                                 capture_output=True, text=True, timeout=30)
            return json.loads(run.stdout)["supervisor"] if run.returncode == 0 else {}

        st = wait_for(status, timeout=30, what="supervisor ready on a damaged state dir")
        assert st["state"] == "ready" and st["restarts"] == 0
        assert any("journal" in p for p in st["checkpoint"]["problems"])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        drop_region(state_dir)   # the region outlives the supervisor on purpose


def test_an_incomplete_restore_never_overwrites_the_checkpoint(tmp_path: Path) -> None:
    """A backing file missing at restart (a mount not up yet): the restore cannot bring
    its namespace back, and the drift check once saved that smaller live configuration
    as the checkpoint, forgetting the namespace for good."""
    image = tmp_path / "a0.img"
    image.write_bytes(bytes(1 << 20))
    with supervised(tmp_path) as sup, RpcClient.connect(str(tmp_path / PUBLIC)) as c:
        _configure(c, image)
        image.rename(tmp_path / "away.img")
        assert sup.proc is not None
        old = sup.proc.pid
        sup.proc.send_signal(signal.SIGKILL)
        wait_for(lambda: sup.status.restarts == 1 and sup.status.state == "ready",
                 timeout=30, what="restart")
        assert sup.proc.pid != old and "A0" in sup.status.last_error
        sup._check_drift()
        saved = sup.store.load().state
        assert saved is not None and "A0" in saved.bdevs   # the checkpoint kept it
        (tmp_path / "away.img").rename(image)
        sup.proc.send_signal(signal.SIGKILL)
        wait_for(lambda: sup.status.restarts == 2 and sup.status.state == "ready",
                 timeout=30, what="second restart")
        ns = rn.nvmf_get_subsystems(c, "nqn.2016-06.io.phx:keep")[0]["namespaces"]
        assert sorted(n["bdev_name"] for n in ns) == ["A0", "M0"]


# A target that is alive and answers liveness pings, but drops any other call: the
# restore fails with the process still running.
HALF_TARGET = r"""
import os, socket, sys
path = sys.argv[sys.argv.index("-r") + 1]
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(8)
while True:
    c, _ = s.accept()
    data = c.recv(65536)
    if b"spdk_get_version" in data:
        c.sendall(b'{"jsonrpc":"2.0","id":1,"result":{"version":"half"}}')
    c.close()
"""


def test_a_restore_that_fails_on_a_live_target_is_retried_not_stuck(tmp_path: Path) -> None:
    """Once, a restore failing with the target alive left the supervisor 'restarting'
    for ever: pings answered, so nothing replaced the half-restored target."""
    with supervised(tmp_path, ping_interval=0.2, max_restarts=2,
                    restart_window=60) as sup:
        sup.target_cmd = [sys.executable, "-c", HALF_TARGET]
        assert sup.proc is not None
        sup.proc.send_signal(signal.SIGKILL)
        wait_for(lambda: sup.status.state == "failed", timeout=60, what="a clear end")
        assert "crash loop" in sup.status.last_error
        assert sup.proc is not None and sup.proc.poll() is not None   # none left running


def test_a_death_during_a_drift_check_is_noticed_while_a_mutation_waits(
        tmp_path: Path) -> None:
    """Found by 100 kills under the torture run: a drift check waited for the front's
    lock, held by a mutation that was itself waiting for the watcher to restart the dead
    target; both waited 60 s, and the mutation failed."""
    with supervised(tmp_path, drift_interval=0.05, ping_interval=0.2) as sup:
        assert sup.proc is not None
        checks = []
        check = sup._check_drift

        def counted() -> None:
            checks.append(1)
            check()

        sup._check_drift = counted
        with sup.front.lock:   # as a mutation in flight holds it
            wait_for(lambda: checks, timeout=10, what="a drift check under way")
            sup.proc.send_signal(signal.SIGKILL)
            wait_for(lambda: sup.status.restarts == 1 and sup.status.state == "ready",
                     timeout=20, what="restart while the front's lock is held")


def _damage_spot(rng: random.Random, geo: Any) -> int:
    """Half the time a byte that matters (header, seal, a commit record), else anywhere in
    the header page and the two commit slots (blobs, the older slot, unused bytes)."""
    from nvmf_phoenix.embedded import connstate as cs

    vital = [*range(cs.HEADER.size + 4), *range(cs.SEAL_OFFSET, cs.SEAL_OFFSET + cs.SEAL.size),
             *(cs.HEADER_SIZE + i * geo.commit_size + k for i in (0, 1)
               for k in range(cs.COMMIT.size + 4))]
    if rng.random() < 0.5:
        return rng.choice(vital)
    return rng.randrange(cs.HEADER_SIZE + 2 * geo.commit_size)


@pytest.mark.slow
def test_damaged_queue_pair_state_is_never_resumed(tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    """Random damage to a connection's shared state (header, seal, commit records and
    blobs) before its worker is SIGKILLed: the successor resumes the connection only when
    the damage did not touch what it uses (and then the host's data is right and nothing
    is completed twice), and otherwise closes it cleanly (the host reconnects). Never a
    resume with wrong state."""
    import mmap

    from nvmf_phoenix.embedded.connstate import ConnState
    from nvmf_phoenix.initiator.connection import NvmeError
    from nvmf_phoenix.initiator.host import Host

    from tests.target_fixture import HOSTNQN, NQN
    from tests.transparent_target import transparent_target

    rng = random.Random(11)
    trials = int(request.config.getoption("--damage-trials"))
    outcomes = {"resumed": 0, "closed": 0}
    with transparent_target(tmp_path) as t:
        t.configure()
        seen = t.wait_standby()["takeovers"]
        for trial in range(trials):
            host = Host("127.0.0.1", t.port, NQN, hostnqn=HOSTNQN)
            try:
                host.create_io_queues(1)
                data = os.urandom(4096)
                host.write(1, trial, data, 4096)
                *_, admin, io = t.conn_ids()             # this host's two queues (newest)
                path = t.state_file(f"conn-{rng.choice((admin, io))}")
                st = ConnState.open(str(path))
                spot = _damage_spot(rng, st.geo)
                st.close()
                with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
                    mm[spot] ^= 1 << rng.randrange(8)
                t.kill_active()
                seen = t.wait_standby(seen + 1)["takeovers"]
                try:
                    got = host.read(1, trial, 1, 4096)
                    host.keep_alive()
                except NvmeError as exc:
                    assert "closed" in str(exc), exc   # never a wrong completion
                    outcomes["closed"] += 1
                else:
                    assert got == data
                    outcomes["resumed"] += 1
            finally:
                host.close()
    print(f"damaged queue-pair state: {outcomes}")
    assert outcomes["closed"] >= 1 and sum(outcomes.values()) == trials
