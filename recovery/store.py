"""Checkpoints: one TargetState kept in the shared-memory region and the durable journal.

A checkpoint is the last whole state plus the changes journaled after it. ``save`` writes
a whole state: the journal record (fsync'd unless the caller batches) and the region
snapshot. ``record`` journals one acknowledged call's change (changes.py operations) and
applies it to ``current``, the state as of now; every ``MAX_CHANGES`` changes the whole
state is written again, so loading never replays many. ``load`` reads both copies, reports
what is wrong with either, takes the whole state from shared memory when it is valid and
at least as new as the journal's, from the journal (or its compacted snapshot) otherwise,
saying which and why, and replays the journal's changes newer than it.

A store may have a ``replica``: a checkpoint kept elsewhere for other nodes (etcd,
:mod:`~.etcd_store`). Every ``save`` and ``record`` is then committed to it as well, after
the local write (which stays the fast path for restarts on this node). A replica commit
that fails does not fail the local one: ``replica_error`` says why the replica is behind
(the front turns it into an error for the call's client) and the next commit sends the
whole state, so the replica catches up.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from nvmf_phoenix.persist import shm
from nvmf_phoenix.persist.region import (
    Region,
    RegionError,
    private_dir,
    read_latest,
    read_mark,
)
from nvmf_phoenix.recovery import changes
from nvmf_phoenix.recovery.journal import (
    KIND_CHANGE,
    KIND_INTENT,
    KIND_OUTCOME,
    KIND_STATE,
    Journal,
    JournalError,
    Record,
    read_journal,
    read_snapshot,
)

from nvmf_phoenix.model import TargetState

log = logging.getLogger(__name__)
COMPACT_AT = 8 << 20
MAX_CHANGES = 256


@dataclass
class Loaded:
    state: TargetState | None
    source: str                  # "shared memory", "journal", "snapshot" or "none"
    seq: int
    saved_at: float
    reason: str
    problems: list[str] = field(default_factory=list)
    changes: int = 0             # journaled changes replayed onto the whole state


def _encode(state: TargetState, seq: int) -> bytes:
    return json.dumps({"seq": seq, "saved_at": time.time(), "state": state.to_dict()},
                      separators=(",", ":")).encode()


def _decode(payload: bytes) -> tuple[int, float, TargetState]:
    doc = json.loads(payload)
    return int(doc["seq"]), float(doc["saved_at"]), TargetState.from_dict(doc["state"])


class ReplicaError(Exception):
    """The replica (the cluster's copy of the checkpoint) did not take a commit."""


class ReplicaMismatch(ReplicaError):
    """The replica cannot take this change on its own (its state lacks what the change
    touches, or it has no state yet): commit the whole state instead."""


class Replica(Protocol):
    def commit_change(self, ops: list[changes.Op]) -> int: ...

    def commit_state(self, state: TargetState) -> int: ...

    def describe(self) -> dict[str, Any]: ...


class StateDirBusy(Exception):
    """Another process (a supervisor, another CLI) is writing checkpoints to the directory."""


def lock_state_dir(directory: str) -> int:
    """Take the state directory's writer lock (flock on ``<dir>/lock``); return its fd.

    One writer per journal: two appenders would interleave records and each would cut
    the other's "torn" tail on open. The lock goes when the fd is closed or the process
    dies, so a SIGKILLed writer never leaves it held.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirBusy(f"{directory} is in use by another nvmf-phoenix process "
                           "(a running supervisor?)") from None
    return fd


def region_name(directory: str) -> str:
    """The region of a state directory: ``state-<its name>-<hash of its path>`` (the
    ``.region`` suffix is the store's), readable in a listing, unique per path."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(os.path.abspath(directory)))
    return f"state-{base[:40]}-{shm.owner_tag(directory)}"


def _legacy_name(directory: str) -> str:
    return f"supervisor-{shm.owner_tag(directory)}.region"


def find_region(directory: str, region_dir: str | None = None) -> str | None:
    """The region of a state directory, under its name or the one older versions gave
    it, without creating anything (the directory itself may be gone)."""
    return (shm.find(region_name(directory) + ".region", region_dir)
            or shm.find(_legacy_name(directory), region_dir))


def _migrate(directory: str, region_dir: str | None) -> None:
    """Rename a region made by an older version (``supervisor-<hash>.region``, named so
    even when no supervisor ran) to the state directory's name, recording its owner."""
    old = shm.find(_legacy_name(directory), region_dir)
    if old is None or shm.find(region_name(directory) + ".region", region_dir):
        return
    new = os.path.join(os.path.dirname(old), region_name(directory) + ".region")
    try:
        os.rename(old, new)
    except OSError:
        return                  # another process migrated it first, or cannot: load finds
    shm.record_owner(new, os.path.abspath(directory), shm.OWNER_STATE_DIR)
    log.info("region %s renamed %s (its state directory's name)", old, new)


@dataclass
class Pending:
    """A mutating call journaled by the front whose outcome was never recorded."""

    seq: int
    method: str
    params: object
    before: TargetState | None    # the checkpoint before it (None: compacted away)


class CheckpointStore:
    @classmethod
    def for_state_dir(cls, directory: str, **kwargs: object) -> CheckpointStore:
        """The store of a state directory, its shared-memory region named after the
        directory's path, so every process using the directory finds the same region.
        A region under the name older versions gave it is renamed on the way."""
        region_dir = kwargs.get("region_dir")
        _migrate(directory, region_dir if isinstance(region_dir, str) else None)
        store = cls(directory, name=region_name(directory), **kwargs)  # type: ignore[arg-type]
        store.region_owner = os.path.abspath(directory)
        return store

    def __init__(self, directory: str, name: str = "nvmf-phoenix",
                 region_dir: str | None = None, slot_size: int = 8 << 20) -> None:
        private_dir(directory)   # ours and 0700, or refused
        self.directory = directory
        self.journal_path = os.path.join(directory, "journal")
        self.snapshot_path = os.path.join(directory, "snapshot")
        for path in (self.journal_path, self.snapshot_path):
            if os.path.exists(path) and os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)   # written by an older version, or copied in
        self.problems: list[str] = []   # what went wrong saving (shown by status)
        self.region_name = f"{name}.region"
        self.region_dir = region_dir
        self.region_owner: str | None = None   # recorded beside the region when set
        self.slot_size = slot_size
        self._journal: Journal | None = None
        self._region: Region | None = None
        # The state as of the newest save, load or recorded change. The store owns it:
        # recorded changes apply to it in place.
        self.current: TargetState | None = None
        self.pending = 0          # changes recorded since the last whole state
        self.replica: Replica | None = None
        self.replica_error = ""   # why the replica is behind ("": it has every commit)
        # Held across save and load, and by callers that must check something and save
        # atomically (the supervisor's front: "still the same target" then save).
        self.lock = threading.RLock()

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self.journal_path)
            # After compaction the journal restarts empty: sequence numbers continue
            # from the snapshot (or the region) so "newer" keeps its meaning.
            problems: list[str] = []
            known = [x[0] for x in (self._load_disk(self._records(problems), problems),
                                    self._load_region(problems))
                     if x is not None]
            self._journal.last_seq = max([self._journal.last_seq, *known])
        return self._journal

    @property
    def region(self) -> Region:
        if self._region is None:
            path = self.region_path()
            try:
                self._region = Region.open(path) if path else None
            except RegionError:
                self._region = None
            if self._region is None:
                self._region = Region.create(self.region_name, self.slot_size,
                                             directory=self.region_dir)
                if self.region_owner:   # outliving us, it says whose it is (shm list)
                    shm.record_owner(self._region.path, self.region_owner,
                                     shm.OWNER_STATE_DIR)
        return self._region

    def region_path(self) -> str | None:
        return shm.find(self.region_name, self.region_dir)

    def save(self, state: TargetState, durable: bool = True, replicate: bool = True) -> int:
        """Save a whole state; with ``replicate``, commit it to the replica too (callers
        that hold ``lock`` pass False and call :meth:`replicate` after releasing it, so
        a slow replica never delays a restart's load)."""
        with self.lock:
            seq = self._save(state, durable)
            if replicate:
                self.replicate(None)
            return seq

    def _save(self, state: TargetState, durable: bool) -> int:
        seq = self.journal.last_seq + 1
        payload = _encode(state, seq)
        self.journal.append(KIND_STATE, payload, sync=durable)
        self.journal.write()       # a reader of the file (a load) must see it
        try:   # shared memory speeds restarts up; the journal alone is enough
            self.region.write_snapshot(payload)
            self.region.set_mark(seq)
        except (RegionError, OSError) as exc:
            if str(exc) not in self.problems:
                log.warning("checkpoint kept in the journal only: %s", exc)
                self.problems.append(str(exc))
        self.current, self.pending = state, 0
        if self.journal.size() > COMPACT_AT:
            self.journal.compact(self.snapshot_path, payload)
        return seq

    def record(self, intent: int, ops: list[changes.Op], replicate: bool = True) -> int:
        """Journal the change the call journaled as ``intent`` made, and apply it to
        ``current``. Written, not fsync'd: the caller's outcome record makes both durable
        with one fsync. Raises ModelMismatch, writing nothing, when the change does not
        fit ``current`` (the caller then saves a whole state instead)."""
        with self.lock:
            if self.current is None:
                raise changes.ModelMismatch("no checkpoint to record a change against")
            changes.apply(self.current, ops)
            seq = self.journal.append(KIND_CHANGE, json.dumps(
                {"intent": intent, "ops": ops}, separators=(",", ":")).encode())
            self.journal.write()
            # The change lives in the journal only: shared memory remembers that it
            # exists, so a journal cut short after it is reported, not silently older.
            with contextlib.suppress(RegionError, OSError):
                self.region.set_mark(seq)
            self.pending += 1
            if self.pending >= MAX_CHANGES:     # (which also compacts a long journal)
                self._save(self.current, durable=False)
            if replicate:
                self.replicate(ops)
            return seq

    def replicate(self, ops: list[changes.Op] | None) -> None:
        """Commit to the replica what was just written locally: the change ``ops``, or
        the whole state (``ops`` None, or the replica is behind)."""
        if self.replica is None or self.current is None:
            return
        try:
            if ops is None or self.replica_error:
                self.replica.commit_state(self.current)
            else:
                try:
                    self.replica.commit_change(ops)
                except ReplicaMismatch:
                    self.replica.commit_state(self.current)
            if self.replica_error:
                log.warning("cluster store up to date again")
            self.replica_error = ""
        except ReplicaError as exc:
            if not self.replica_error:
                log.warning("cluster store behind (the next commit sends the whole "
                            "state): %s", exc)
            self.replica_error = str(exc) or type(exc).__name__

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._region is not None:
            self._region.close()
            self._region = None

    def load(self) -> Loaded:
        with self.lock:
            loaded = self._load()
        if loaded.state is not None:
            self.current, self.pending = loaded.state, loaded.changes
        return loaded

    def _load(self) -> Loaded:
        problems: list[str] = []
        records = self._records(problems)
        disk = self._load_disk(records, problems)
        shm = self._load_region(problems)
        if shm and (not disk or shm[0] >= disk[0]):
            seq, at, st = shm
            why = "valid and newest" if not disk or shm[0] > disk[0] else \
                "valid and as new as the journal"
            loaded = Loaded(st, "shared memory", seq, at, f"shared memory {why}", problems)
        elif disk:
            seq, at, st, src = disk
            why = "shared memory unusable" if not shm else "journal newer than shared memory"
            loaded = Loaded(st, src, seq, at, f"{src}: {why}", problems)
        else:
            return Loaded(None, "none", 0, 0.0, "no checkpoint found", problems)
        self._replay(loaded, records)
        return loaded

    def _replay(self, loaded: Loaded, records: list[Record]) -> None:
        """Apply the journal's changes newer than the whole state ``loaded`` holds, in
        order, as far as they are unbroken: a sequence number missing among them is a
        damaged record that may have held a change, so replay stops there (a state that
        existed, with a problem saying what may be missing) rather than go on to one
        that never did."""
        assert loaded.state is not None
        expect = loaded.seq + 1
        for rec in records:
            if rec.seq <= loaded.seq:
                continue
            if rec.seq != expect:
                loaded.problems.append(
                    f"journal records {expect}..{rec.seq - 1} after the whole state are "
                    f"missing (damaged): replay stopped at {expect - 1}, changes after "
                    "it are not restored")
                break
            expect = rec.seq + 1
            try:
                if rec.kind == KIND_STATE:     # newer than the whole state picked
                    _, _, loaded.state = _decode(rec.payload)
                    loaded.seq, loaded.changes = rec.seq, 0
                elif rec.kind == KIND_CHANGE:
                    changes.apply(loaded.state, json.loads(rec.payload)["ops"])
                    loaded.changes += 1
                    loaded.seq = rec.seq
            except (ValueError, KeyError, TypeError, changes.ModelMismatch) as exc:
                loaded.problems.append(f"journal record {rec.seq} not replayed ({exc!r}): "
                                       "replay stopped there")
                break
        if loaded.changes:
            loaded.reason += f"; {loaded.changes} journaled changes replayed"
        self._check_mark(loaded)

    def _check_mark(self, loaded: Loaded) -> None:
        """Shared memory's journal mark beyond what was loaded: records were lost."""
        path = self.region_path()
        if path is None:
            return
        try:
            mark = read_mark(path)
        except RegionError as exc:
            loaded.problems.append(f"{exc}: cannot tell whether the journal is complete")
            return
        if mark is not None and mark > loaded.seq:
            loaded.problems.append(f"the journal reached record {mark} (shared memory says) "
                                   f"but what was loaded ends at {loaded.seq}: newer "
                                   "changes are lost (journal cut short or replaced?)")

    def unresolved(self) -> list[Pending]:
        """Intents in the journal without an outcome: calls that were in flight when the
        front itself died. Each comes with the state just before it: the last whole state
        journaled before it plus the changes between."""
        problems: list[str] = []
        records = self._records(problems)
        done = set()
        for rec in records:
            if rec.kind == KIND_OUTCOME:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    done.add(int(json.loads(rec.payload)["intent"]))
        open_ = {r.seq for r in records if r.kind == KIND_INTENT and r.seq not in done}
        if not open_:
            return []
        before = self._snapshot_before(records)
        pending: list[Pending] = []
        for rec in records:
            try:
                if rec.kind == KIND_STATE:
                    before = _decode(rec.payload)[2]
                elif rec.kind == KIND_CHANGE and before is not None:
                    changes.apply(before, json.loads(rec.payload)["ops"])
                elif rec.kind == KIND_INTENT and rec.seq in open_:
                    doc = json.loads(rec.payload)
                    pending.append(Pending(rec.seq, str(doc["method"]), doc.get("params"),
                                           copy.deepcopy(before)))
            except (ValueError, KeyError, TypeError, changes.ModelMismatch):
                continue
        return pending

    def _snapshot_before(self, records: list[Record]) -> TargetState | None:
        """The compacted snapshot, when the journal's records continue right after it."""
        if not records or not os.path.exists(self.snapshot_path):
            return None
        try:
            seq, payload = read_snapshot(self.snapshot_path)
            return _decode(payload)[2] if seq < records[0].seq else None
        except (JournalError, ValueError, KeyError):
            return None

    def _records(self, problems: list[str]) -> list[Record]:
        """The journal's whole records (none when it is missing or unreadable)."""
        if not os.path.exists(self.journal_path):
            return []
        try:
            res = read_journal(self.journal_path)
        except JournalError as exc:
            problems.append(str(exc))
            return []
        if res.problem:
            problems.append(f"journal {self.journal_path}: {res.problem}")
        return res.records

    def _load_region(self, problems: list[str]) -> tuple[int, float, TargetState] | None:
        path = self.region_path()
        if path is None:
            problems.append("no shared-memory region (node restarted or never saved)")
            return None
        try:
            return _decode(read_latest(path))
        except (RegionError, ValueError, KeyError) as exc:
            problems.append(str(exc))
            return None

    def _load_disk(self, records: list[Record],
                   problems: list[str]) -> tuple[int, float, TargetState, str] | None:
        """The newest whole state on disk: the journal's last, or the snapshot's."""
        best: tuple[int, float, TargetState, str] | None = None
        if os.path.exists(self.snapshot_path):
            try:
                _, payload = read_snapshot(self.snapshot_path)
                best = (*_decode(payload), "snapshot")
            except (JournalError, ValueError, KeyError) as exc:
                problems.append(str(exc))
        for rec in reversed(records):
            if rec.kind == KIND_STATE:
                try:
                    seq, at, st = _decode(rec.payload)
                except (ValueError, KeyError) as exc:
                    problems.append(f"journal state {rec.seq}: {exc!r}")
                    continue
                if best is None or seq > best[0]:
                    best = (seq, at, st, "journal")
                break
        return best
