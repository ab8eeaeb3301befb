"""Checkpoints: one TargetState kept in the shared-memory region and the durable journal.

``save`` writes the journal record (fsync'd unless the caller batches) and the region
snapshot; ``load`` reads both, reports what is wrong with either, and uses shared memory
when it is valid and at least as new as the journal, the journal (or its compacted
snapshot) otherwise, saying which and why.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from nvmf_phoenix.recovery import shm
from nvmf_phoenix.recovery.journal import (
    KIND_INTENT,
    KIND_OUTCOME,
    KIND_STATE,
    Journal,
    JournalError,
    read_journal,
    read_snapshot,
)
from nvmf_phoenix.recovery.region import Region, RegionError, private_dir, read_latest

from nvmf_phoenix.model import TargetState

log = logging.getLogger(__name__)
COMPACT_AT = 8 << 20


@dataclass
class Loaded:
    state: TargetState | None
    source: str                  # "shared memory", "journal", "snapshot" or "none"
    seq: int
    saved_at: float
    reason: str
    problems: list[str] = field(default_factory=list)


def _encode(state: TargetState, seq: int) -> bytes:
    return json.dumps({"seq": seq, "saved_at": time.time(), "state": state.to_dict()},
                      separators=(",", ":")).encode()


def _decode(payload: bytes) -> tuple[int, float, TargetState]:
    doc = json.loads(payload)
    return int(doc["seq"]), float(doc["saved_at"]), TargetState.from_dict(doc["state"])


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
        directory's path, so every process using the directory finds the same region."""
        tag = hashlib.sha1(os.path.abspath(directory).encode()).hexdigest()[:12]
        return cls(directory, name=f"supervisor-{tag}", **kwargs)  # type: ignore[arg-type]

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
        self.slot_size = slot_size
        self._journal: Journal | None = None
        self._region: Region | None = None
        self.last_saved: TargetState | None = None   # newest state saved or loaded here
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
            known = [x[0] for x in (self._load_disk(problems), self._load_region(problems))
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
        return self._region

    def region_path(self) -> str | None:
        return shm.find(self.region_name, self.region_dir)

    def save(self, state: TargetState, durable: bool = True) -> int:
        with self.lock:
            return self._save(state, durable)

    def _save(self, state: TargetState, durable: bool) -> int:
        seq = self.journal.last_seq + 1
        payload = _encode(state, seq)
        self.journal.append(KIND_STATE, payload, sync=durable)
        try:   # shared memory speeds restarts up; the journal alone is enough
            self.region.write_snapshot(payload)
        except (RegionError, OSError) as exc:
            if str(exc) not in self.problems:
                log.warning("checkpoint kept in the journal only: %s", exc)
                self.problems.append(str(exc))
        self.last_saved = state
        if self.journal.size() > COMPACT_AT:
            self.journal.compact(self.snapshot_path, payload)
        return seq

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
            self.last_saved = loaded.state
        return loaded

    def _load(self) -> Loaded:
        problems: list[str] = []
        disk = self._load_disk(problems)
        shm = self._load_region(problems)
        if shm and (not disk or shm[0] >= disk[0]):
            seq, at, st = shm
            why = "valid and newest" if not disk or shm[0] > disk[0] else \
                "valid and as new as the journal"
            return Loaded(st, "shared memory", seq, at, f"shared memory {why}", problems)
        if disk:
            seq, at, st, src = disk
            why = "shared memory unusable" if not shm else "journal newer than shared memory"
            return Loaded(st, src, seq, at, f"{src}: {why}", problems)
        return Loaded(None, "none", 0, 0.0, "no checkpoint found", problems)

    def unresolved(self) -> list[Pending]:
        """Intents in the journal without an outcome: calls that were in flight when the
        front itself died. Each comes with the last checkpoint journaled before it."""
        if not os.path.exists(self.journal_path):
            return []
        try:
            records = read_journal(self.journal_path).records
        except JournalError:
            return []
        pending: dict[int, Pending] = {}
        before: TargetState | None = None
        for rec in records:
            try:
                doc = json.loads(rec.payload)
                if rec.kind == KIND_STATE:
                    before = _decode(rec.payload)[2]
                elif rec.kind == KIND_INTENT:
                    pending[rec.seq] = Pending(rec.seq, str(doc["method"]),
                                               doc.get("params"), before)
                elif rec.kind == KIND_OUTCOME:
                    pending.pop(int(doc["intent"]), None)
            except (ValueError, KeyError, TypeError):
                continue
        return list(pending.values())

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

    def _load_disk(self, problems: list[str]) -> tuple[int, float, TargetState, str] | None:
        best: tuple[int, float, TargetState, str] | None = None
        if os.path.exists(self.snapshot_path):
            try:
                _, payload = read_snapshot(self.snapshot_path)
                best = (*_decode(payload), "snapshot")
            except (JournalError, ValueError, KeyError) as exc:
                problems.append(str(exc))
        if os.path.exists(self.journal_path):
            try:
                res = read_journal(self.journal_path)
                if res.problem:
                    problems.append(f"journal {self.journal_path}: {res.problem}")
                for rec in reversed(res.records):
                    if rec.kind == KIND_STATE:
                        seq, at, st = _decode(rec.payload)
                        if best is None or seq > best[0]:
                            best = (seq, at, st, "journal")
                        break
            except (JournalError, ValueError, KeyError) as exc:
                problems.append(str(exc))
        return best
