"""Shared-memory region, journal and checkpoint store: formats, corruption, SIGKILL."""
from __future__ import annotations

import os
import random
import signal
import struct
from pathlib import Path

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nvmf_phoenix.persist.region import Region, RegionError
from nvmf_phoenix.recovery.journal import (
    KIND_STATE,
    Journal,
    JournalError,
    read_journal,
    read_snapshot,
    write_snapshot,
)
from nvmf_phoenix.recovery.store import CheckpointStore

from nvmf_phoenix.model import Subsystem, TargetState


def _payload(n: int, size: int) -> bytes:
    """Self-describing payload: a torn one cannot pass for a whole one."""
    return struct.pack("<QQ", n, size) + bytes([n % 251]) * size


def _check(payload: bytes) -> int:
    n, size = struct.unpack_from("<QQ", payload)
    assert payload[16:] == bytes([n % 251]) * size
    return n


def test_region_round_trip_and_permissions(tmp_path: Path) -> None:
    r = Region.create("t.region", slot_size=1 << 16, directory=str(tmp_path))
    assert r.read_snapshot() is None
    g1 = r.write_snapshot(b"one")
    g2 = r.write_snapshot(b"two")
    assert g2 == g1 + 1 and r.read_snapshot() == (g2, b"two")
    assert os.stat(r.path).st_mode & 0o777 == 0o600
    r.close()
    again = Region.open(str(tmp_path / "t.region"))
    assert again.read_snapshot() == (g2, b"two")
    again.close()


def test_region_prefers_hugetlbfs_or_says_why(caplog: pytest.LogCaptureFixture) -> None:
    r = Region.create(f"probe-{os.getpid()}.region", slot_size=1 << 16)
    try:
        if not r.hugepages:
            assert "no hugepages available" in caplog.text or "hugetlbfs" in caplog.text
            assert r.path.startswith("/dev/shm/")
        assert r.write_snapshot(b"x") == 1
    finally:
        r.close()
        r.unlink()


@pytest.mark.parametrize("damage,message", [
    (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
    (lambda b: b[:8] + struct.pack("<I", 99) + b[12:], "newer than"),
    (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], "header CRC mismatch"),
    (lambda b: b[:30], "truncated"),
])
def test_region_corruption_is_named(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    r = Region.create("c.region", slot_size=1 << 16, directory=str(tmp_path))
    r.write_snapshot(b"state")
    r.close()
    path = tmp_path / "c.region"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(RegionError, match=message):
        Region.open(str(path))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 16) + 4096 * 2 - 1), st.integers(1, 255))
def test_region_payload_bitflip_never_returns_garbage(offset: int, flip: int) -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        r = Region.create("f.region", slot_size=1 << 16, directory=d)
        r.write_snapshot(_payload(1, 3000))
        r.write_snapshot(_payload(2, 5000))
        off = 4096 + offset
        r.mm[off] ^= flip
        snap = r.read_snapshot()
        assert snap is not None   # one slot at least survives a single flip
        assert _check(snap[1]) == snap[0]
        r.close()


def _killed_writer(tmp_path: Path, kind: str, trials: int) -> None:
    """Fork a writer looping over writes; SIGKILL it at random; the reader must always
    find a complete state no older than the last one the writer acknowledged."""
    rng = random.Random(7)
    region = Region.create("k.region", slot_size=1 << 18,
                           directory=str(tmp_path)) if kind == "region" else None
    jpath = str(tmp_path / "k.journal")
    acked = 0
    for _ in range(trials):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # child: write forever, acknowledging each completed write
            os.close(r)
            n = acked
            j = Journal(jpath) if kind == "journal" else None
            while True:
                n += 1
                size = rng.randrange(1, 200_000)
                if region is not None:
                    region.write_snapshot(_payload(n, size))
                elif j is not None:
                    j.append(KIND_STATE, _payload(n, size % 20_000), sync=True)
                os.write(w, struct.pack("<Q", n))
        os.close(w)
        want = rng.randrange(1, 6)
        got = b""
        while len(got) < 8 * want:
            got += os.read(r, 8 * want - len(got))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        rest = b""
        while chunk := os.read(r, 65536):
            rest += chunk
        os.close(r)
        acks = got + rest
        acked = struct.unpack_from("<Q", acks, len(acks) - 8)[0]
        if region is not None:
            snap = region.read_snapshot()
            assert snap is not None and _check(snap[1]) >= acked
            acked = _check(snap[1])
        else:
            res = read_journal(jpath)
            assert res.records and _check(res.records[-1].payload) >= acked
            acked = _check(res.records[-1].payload)
            for rec in res.records:
                _check(rec.payload)
    if region is not None:
        region.close()


@pytest.mark.slow
def test_region_survives_writer_sigkill_at_random_points(tmp_path: Path) -> None:
    _killed_writer(tmp_path, "region", 200)


@pytest.mark.slow
def test_journal_survives_writer_sigkill_at_random_points(tmp_path: Path) -> None:
    _killed_writer(tmp_path, "journal", 200)


def test_journal_tail_damage_is_reported_and_cut(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    j = Journal(path)
    for i in range(5):
        j.append(KIND_STATE, f"rec{i}".encode())
    j.sync()
    j.close()
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-3])   # torn last record
    res = read_journal(path)
    assert [r.payload for r in res.records] == [b"rec0", b"rec1", b"rec2", b"rec3"]
    assert res.problem and "truncated record" in res.problem
    j = Journal(path)                   # reopening cuts the tail, appends stay readable
    assert j.problem and j.last_seq == 4
    j.append(KIND_STATE, b"rec5", sync=True)
    j.close()
    assert [r.payload for r in read_journal(path).records][-1] == b"rec5"
    raw = bytearray(Path(path).read_bytes())
    raw[37] ^= 0xFF   # inside the first record's payload
    Path(path).write_bytes(bytes(raw))
    assert "CRC mismatch" in (read_journal(path).problem or "")
    Path(path).write_bytes(b"NOTAJRNL" + bytes(8))
    with pytest.raises(JournalError, match="bad magic"):
        read_journal(path)


def _sealed(body: bytes, covers: bytes = b"") -> bytes:
    """A record framed by hand, as the files' first readers wrote them: the fields, then
    the CRC32C of them (and of what follows, for a journal record)."""
    return body + struct.pack("<I", crc32c.crc32c(body + covers))


def test_regions_of_the_previous_layout_still_open(tmp_path: Path) -> None:
    """A region made before the queue-pair table was retired (4,096 records after slot 1)
    opens, and reads and takes snapshots and the journal mark as before."""
    slot, qp_slots, qp_rec = 1 << 16, 4096, struct.calcsize("<BxHHHHIB3x64s48s48s") + 4
    s0, s1 = 4096, 4096 + slot
    size = s1 + slot + qp_slots * qp_rec
    buf = bytearray(size)
    head = _sealed(struct.pack("<8sIIQIIQQQQ", b"PHXREGN1", 1, 4096, slot, qp_slots, qp_rec,
                               s0, s1, s1 + slot, size))
    buf[:len(head)] = head
    payload = b"old state"
    rec = _sealed(struct.pack("<QQI", 7, len(payload), crc32c.crc32c(payload)))
    buf[s1:s1 + len(rec)] = rec
    buf[s1 + 64:s1 + 64 + len(payload)] = payload
    buf[2048:2060] = _sealed(struct.pack("<Q", 42))
    path = tmp_path / "old.region"
    path.write_bytes(bytes(buf))
    path.chmod(0o600)
    r = Region.open(str(path))
    assert r.read_snapshot() == (7, b"old state") and r.mark() == 42
    assert r.write_snapshot(b"new") == 8
    r.close()
    again = Region.open(str(path))
    assert again.read_snapshot() == (8, b"new")
    assert bytes(again.mm[s0:s0 + 24]) == _sealed(struct.pack("<QQI", 8, 3,
                                                              crc32c.crc32c(b"new")))
    again.close()


def test_records_keep_the_bytes_they_always_had(tmp_path: Path) -> None:
    """Region header, slot header and mark, and journal records, byte for byte as the
    hand-written framing made them: existing files stay readable both ways."""
    r = Region.create("b.region", slot_size=1 << 16, directory=str(tmp_path))
    r.write_snapshot(b"state")
    r.set_mark(9)
    size = 4096 + 2 * (1 << 16)
    assert bytes(r.mm[:68]) == _sealed(struct.pack("<8sIIQIIQQQQ", b"PHXREGN1", 1, 4096,
                                                   1 << 16, 0, 0, 4096, 4096 + (1 << 16),
                                                   size, size))
    assert bytes(r.mm[4096:4096 + 24]) == _sealed(struct.pack("<QQI", 1, 5,
                                                              crc32c.crc32c(b"state")))
    assert bytes(r.mm[2048:2060]) == _sealed(struct.pack("<Q", 9))
    assert os.path.getsize(r.path) == size     # no queue-pair table any more
    r.close()
    path = str(tmp_path / "j")
    j = Journal(path)
    j.append(KIND_STATE, b"payload", sync=True)
    j.close()
    body = struct.pack("<IHHQ", 7, KIND_STATE, 0, 1)
    assert Path(path).read_bytes()[16:] == _sealed(body, b"payload") + b"payload"


def test_snapshot_is_atomic_and_checked(tmp_path: Path) -> None:
    path = str(tmp_path / "snap")
    write_snapshot(path, 9, b"payload")
    assert read_snapshot(path) == (9, b"payload")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["snap"]   # no temp file left
    raw = bytearray(Path(path).read_bytes())
    raw[-1] ^= 1
    Path(path).write_bytes(bytes(raw))
    with pytest.raises(JournalError, match="CRC mismatch"):
        read_snapshot(path)


def _state(serial: str) -> TargetState:
    s = TargetState()
    s.subsystems["nqn.2016-06.io.spdk:x"] = Subsystem(nqn="nqn.2016-06.io.spdk:x",
                                                      serial_number=serial)
    return s


def test_store_prefers_shared_memory_and_falls_back(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "ckpt"), name=f"t{os.getpid()}",
                            region_dir=str(tmp_path / "shm"))
    store.save(_state("A"))
    store.save(_state("B"))
    store.close()
    got = store.load()
    assert got.source == "shared memory" and got.seq == 2
    assert got.state is not None and \
        got.state.subsystems["nqn.2016-06.io.spdk:x"].serial_number == "B"
    # The node died: shared memory is gone. The journal still has it.
    for p in (tmp_path / "shm").iterdir():
        p.unlink()
    got = store.load()
    assert got.source == "journal" and got.seq == 2 and got.problems
    # A corrupted region is reported and the journal used.
    store = CheckpointStore(str(tmp_path / "ckpt"), name=f"t{os.getpid()}",
                            region_dir=str(tmp_path / "shm"))
    store.save(_state("C"))
    store.close()
    region = next((tmp_path / "shm").iterdir())
    raw = bytearray(region.read_bytes())
    raw[0] ^= 0xFF
    region.write_bytes(bytes(raw))
    got = store.load()
    assert got.source == "journal" and got.seq == 3
    assert any("bad magic" in p for p in got.problems)


def test_store_compaction_keeps_sequence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    import nvmf_phoenix.recovery.store as store_mod
    monkeypatch.setattr(store_mod, "COMPACT_AT", 1)   # compact on every save
    store = CheckpointStore(str(tmp_path / "ckpt"), region_dir=str(tmp_path / "shm"))
    for i in range(3):
        store.save(_state(f"S{i}"))
    store.close()
    store2 = CheckpointStore(str(tmp_path / "ckpt"), region_dir=str(tmp_path / "shm"))
    store2.save(_state("S3"))
    store2.close()
    for p in (tmp_path / "shm").iterdir():
        p.unlink()
    got = store2.load()
    assert got.seq == 4 and got.state is not None
    assert got.state.subsystems["nqn.2016-06.io.spdk:x"].serial_number == "S3"


def test_region_on_real_hugepages(tmp_path: Path) -> None:
    from tests.hugepages import ensure_hugetlbfs, release

    mnt = tmp_path / "huge"
    why = ensure_hugetlbfs(mnt)
    if why:
        pytest.skip(why)
    try:
        r = Region.create("h.region", slot_size=1 << 20, directory=str(mnt))
        assert r.hugepages and os.path.getsize(r.path) % (2 << 20) == 0
        r.write_snapshot(_payload(5, 100_000))
        r.close()
        again = Region.open(str(mnt / "h.region"))
        snap = again.read_snapshot()
        assert snap is not None and _check(snap[1]) == 5
        again.close()
        again.unlink()
    finally:
        release(mnt)
