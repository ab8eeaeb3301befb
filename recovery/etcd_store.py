"""A group's checkpoint in etcd: the same whole state plus changes as the local store.

The local store (:mod:`~.store`) survives a process; this one survives a node. Its layout
(persist/etcd_keys.py) mirrors the journal: a head key ``{seq, base, chunks, tag}`` names
the newest committed sequence number and the whole state it builds on (zlib'd JSON split
into chunks, each request well under etcd's 1.5 MiB limit), and one key per change
committed after it holds that change's operations (:mod:`~.changes`, the journal's own).

Every commit is one transaction that compares the head's mod revision with the one this
store last read or wrote, plus the caller's fence (the owner key, :mod:`~.ownership`): two
writers that read the same head can never both succeed, and a node that lost ownership
cannot write at all. A whole state's chunks are written first with plain puts under keys
no other writer uses (the store's random tag), then the transaction points the head at
them and drops the older states and the changes, so a reader always sees one complete
checkpoint. Every ``MAX_CHANGES`` changes the state is written whole again, as locally.

etcd may apply a request whose answer timed out: such a commit is remembered, and the
next call first finds out whether it landed (the head and the change are ours) rather
than mistaking our own write for another writer's.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nvmf_phoenix.persist.etcd import (
    KV,
    Endpoints,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    TxnResult,
    compare,
    delete_op,
    prefix_end,
    put_op,
    range_op,
    unb64,
)
from nvmf_phoenix.persist.etcd_keys import ClusterKeys, GroupKeys, decode, encode
from nvmf_phoenix.recovery import changes
from nvmf_phoenix.recovery.store import MAX_CHANGES, ReplicaError, ReplicaMismatch

from nvmf_phoenix.model import TargetState

CHUNK = 512 << 10          # raw bytes per state chunk (base64 makes ~700 KB on the wire)
CHANGE_LIMIT = 512 << 10   # a change larger than this is committed as a whole state
ZLIB_LEVEL = 3


class EtcdStoreError(ReplicaError):
    """The group's checkpoint in etcd cannot be read or written (the message says which
    key, or what etcd answered)."""


class StoreConflict(EtcdStoreError):
    """Another writer committed since this store's last read: reload before writing."""


class Fenced(EtcdStoreError):
    """A fence compare failed: this node is not the group's owner (any more)."""


class StoreMismatch(EtcdStoreError, ReplicaMismatch):
    """The change does not fit the state in etcd (or there is none): commit a whole one."""


class StoreUnavailable(EtcdStoreError, EtcdUnavailable):
    """No etcd member answered the commit: it may or may not have been applied (the
    store finds out on its next call)."""


@dataclass
class EtcdLoaded:
    state: TargetState | None   # whole state at base with the changes after it applied
    seq: int                    # newest committed seq (0: nothing stored)
    revision: int               # etcd revision of the read (for follow())
    head_revision: int          # mod revision of the head key (what commits compare)
    epoch: int                  # groups/<g>/epoch (0 if absent)
    owner: dict[str, Any] | None   # groups/<g>/owner value ({"node", "epoch"}) or None
    base: int = 0               # seq of the whole state the changes build on
    changes: int = 0            # changes replayed onto it


@dataclass
class _Unsure:
    """A commit whose answer never came: what the head (and change key) hold if it landed."""
    head: bytes
    change: tuple[str, bytes] | None
    state: TargetState | None        # a whole state's state


def _fence_holds(cmp: dict[str, Any], kv: KV | None) -> bool:
    """Whether one EQUAL txn compare holds for ``kv`` (None: the key is absent)."""
    target = cmp["target"]
    if target == "VALUE":
        return kv is not None and kv.value == unb64(cmp.get("value"))
    got = {"MOD": kv.mod_revision if kv else 0, "CREATE": kv.create_revision if kv else 0,
           "VERSION": kv.version if kv else 0, "LEASE": kv.lease if kv else 0}[target]
    field = {"MOD": "mod_revision", "CREATE": "create_revision", "VERSION": "version",
             "LEASE": "lease"}[target]
    return got == int(cmp.get(field, 0))


class EtcdGroupStore:
    """One group's checkpoint (``keys``) in the cluster ``client`` talks to.

    ``fence`` returns extra compares every commit carries (ownership sets it; none by
    default). Thread-safe: commits and loads run one at a time.
    """

    def __init__(self, client: EtcdClient, keys: GroupKeys) -> None:
        self.client = client
        self.keys = keys
        self.fence: Callable[[], list[dict[str, Any]]] = lambda: []
        self.tag = os.urandom(4).hex()      # names this writer's state chunks
        self.lock = threading.RLock()
        self._current: TargetState | None = None  # etcd's state as of our last read/write
        # or, after a load, how to build it (built at the first commit: a follower that
        # only loads never pays for a second copy)
        self._recipe: tuple[bytes, list[bytes]] | None = None
        self.seq = 0
        self.base = 0
        self._head: dict[str, Any] = {}
        self._head_rev: int | None = None   # None: never read
        self._unsure: _Unsure | None = None
        self.committed_at = 0.0             # time of the last successful commit
        self.where: dict[str, Any] = {"endpoints": list(client.urls), "keys": keys.root}

    @classmethod
    def open(cls, url: str, group: str = "default",
             timeout: float | None = None) -> EtcdGroupStore:
        """The store of ``group`` in ``etcd://H:P[,H:P...]/PREFIX`` (ValueError if the
        address is not one)."""
        ends = Endpoints.parse(url)
        client = EtcdClient(ends.urls, **({"timeout": timeout} if timeout else {}))
        store = cls(client, ClusterKeys(ends.prefix).group(group))
        store.where.update(prefix=ends.prefix, group=group)
        return store

    def describe(self) -> dict[str, Any]:
        """Where the checkpoint is and what was last committed (for status)."""
        return {"kind": "etcd", **self.where, "seq": self.seq, "base": self.base,
                "head_revision": self._head_rev or 0,
                "committed_at": self.committed_at}

    # -- reading -----------------------------------------------------------------------
    def load(self) -> EtcdLoaded:
        """One consistent read of the group prefix, decoded (EtcdStoreError naming the
        key that does not decode)."""
        with self.lock:
            try:
                revision, kvs = self.client.prefix(self.keys.all)
            except EtcdError as exc:
                raise _store_error(exc, "read") from exc
            loaded, recipe = self._decode(revision, {kv.key.decode(): kv for kv in kvs})
            self._adopt(loaded, recipe)
            return loaded

    @property
    def current(self) -> TargetState | None:
        if self._recipe is not None:
            raw, ops = self._recipe
            self._recipe = None
            self._current = TargetState.from_dict(json.loads(raw)["state"])
            for one in ops:
                changes.apply(self._current, json.loads(one)["ops"])
        return self._current

    @current.setter
    def current(self, state: TargetState | None) -> None:
        self._current, self._recipe = state, None

    def _decode(self, revision: int, kvs: dict[str, KV]
                ) -> tuple[EtcdLoaded, tuple[bytes, list[bytes]] | None]:
        keys = self.keys
        owner = _value(kvs, keys.owner)
        epoch = _value(kvs, keys.epoch)
        head_kv = kvs.get(keys.head)
        head = _value(kvs, keys.head) or {}
        if not isinstance(epoch, (int, str, type(None))) or not str(epoch or 0).isdigit():
            raise EtcdStoreError(f"{keys.epoch}: not an epoch ({epoch!r})")
        loaded = EtcdLoaded(None, 0, revision, head_kv.mod_revision if head_kv else 0,
                            int(epoch or 0), owner if isinstance(owner, dict) else None)
        if head_kv is None:
            return loaded, None
        try:
            seq, base, chunks = int(head["seq"]), int(head["base"]), int(head["chunks"])
            tag = str(head.get("tag", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise EtcdStoreError(f"{keys.head}: not a head ({exc!r})") from None
        parts = []
        for i in range(chunks):
            key = keys.state_chunk(base, i, tag)
            if key not in kvs:
                raise EtcdStoreError(f"{key}: chunk {i} of {chunks} of the whole state at "
                                     f"{base} is missing")
            parts.append(kvs[key].value)
        first = keys.state_chunk(base, 0, tag)
        try:
            raw = zlib.decompress(b"".join(parts))
            doc = json.loads(raw)
            state = TargetState.from_dict(doc["state"])
            if int(doc["seq"]) != base:
                raise ValueError(f"holds seq {doc['seq']}, the head says {base}")
        except (zlib.error, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EtcdStoreError(f"{first}: the whole state at {base} does not decode "
                                 f"({exc!r})") from None
        ops: list[bytes] = []
        for s in range(base + 1, seq + 1):
            key = keys.change(s)
            if key not in kvs:
                raise EtcdStoreError(f"{key}: change {s} is missing (the head says {seq})")
            ops.append(kvs[key].value)
            try:
                changes.apply(state, json.loads(ops[-1])["ops"])
            except (ValueError, KeyError, TypeError, AttributeError,
                    changes.ModelMismatch) as exc:
                raise EtcdStoreError(f"{key}: change {s} does not apply ({exc!r})") from None
        loaded.state, loaded.seq, loaded.base, loaded.changes = state, seq, base, seq - base
        self._head = head
        return loaded, (raw, ops)

    def _adopt(self, loaded: EtcdLoaded, recipe: tuple[bytes, list[bytes]] | None) -> None:
        """What we read is what the next commit builds on."""
        self.current = None
        self._recipe = recipe
        self.seq, self.base = loaded.seq, loaded.base
        if loaded.state is None:
            self._head = {}
        self._head_rev = loaded.head_revision
        self._unsure = None

    def follow(self, after_revision: int, timeout: float) -> EtcdLoaded | None:
        """Wait (watch) until something under the group changes after ``after_revision``
        and return the new load(); None when ``timeout`` passes first.

        A watch can miss what it was asked for (etcd compacted that revision away and
        cancelled the watch, or the stream broke): so a quiet wait ends with one small
        read of the head, owner and epoch keys, and one written after ``after_revision``
        is returned as a change."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for _rev, _events in self.client.watch(
                    self.keys.all, prefix_end(self.keys.all),
                    start_revision=after_revision + 1, timeout=left):
                return self.load()
            # the stream ended early (a member went away): watch again, not in a spin
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        try:
            res = self.client.txn([], [range_op(k) for k in (self.keys.head, self.keys.owner,
                                                             self.keys.epoch)])
        except EtcdError as exc:
            raise _store_error(exc, "read") from exc
        newest = max((kv.mod_revision for i in range(3) for kv in res.kvs(i)), default=0)
        return self.load() if newest > after_revision else None

    # -- writing -----------------------------------------------------------------------
    def commit_change(self, ops: list[changes.Op]) -> int:
        """Commit one change after the newest seq; returns its seq. Raises StoreConflict
        (another writer was first), Fenced, StoreUnavailable, StoreMismatch (commit a
        whole state instead) or EtcdStoreError."""
        with self.lock:
            self._prepare()
            if self.current is None:
                raise StoreMismatch(f"{self.keys.head}: no state known to apply a change "
                                    "to (commit a whole state)")
            try:
                changes.apply(self.current, ops)    # all or nothing
            except changes.ModelMismatch as exc:
                raise StoreMismatch(f"the change does not fit etcd's state ({exc})") from None
            try:
                return self._commit_change(ops)
            except EtcdStoreError:
                if self._unsure is None:   # (unsure: settled on the next call)
                    self.current = None    # holds a change etcd does not
                raise

    def _commit_change(self, ops: list[changes.Op]) -> int:
        assert self.current is not None
        seq = self.seq + 1
        value = encode({"seq": seq, "ops": ops, "writer": self.tag})
        if seq - self.base > MAX_CHANGES or len(value) > CHANGE_LIMIT:
            return self._commit_state(self.current)
        head = encode({**self._head, "seq": seq})
        change = (self.keys.change(seq), value)
        res = self._txn([put_op(change[0], value), put_op(self.keys.head, head)],
                        _Unsure(head, change, None))
        self.seq = seq
        self._committed(res, {**self._head, "seq": seq})
        return seq

    def commit_state(self, state: TargetState) -> int:
        """Commit a whole state (chunks first, then the head in one txn that also drops
        the older states and the changes); returns its seq."""
        with self.lock:
            self._prepare()
            return self._commit_state(state, mine=False)

    def commit_as_change(self, state: TargetState) -> int:
        """Commit ``state``, sending only how it differs from etcd's when operations
        describe that (:func:`~.changes.between`: one small key instead of every
        chunk), else the whole state; returns its seq. Raises as the other commits."""
        with self.lock:
            self._prepare()
            ops = changes.between(self.current, state) if self.current is not None else None
            if ops is not None:
                with contextlib.suppress(StoreMismatch):
                    return self.commit_change(ops)
            return self._commit_state(state, mine=False)

    def _commit_state(self, state: TargetState, mine: bool = True) -> int:
        """``mine``: ``state`` is the store's own (else the caller's: copied)."""
        seq = self.seq + 1
        doc = state.to_dict()
        payload = zlib.compress(json.dumps({"seq": seq, "state": doc},
                                           separators=(",", ":")).encode(), ZLIB_LEVEL)
        if not mine:     # (rebuilt from the dict at hand: less than half a deepcopy's time)
            state = TargetState.from_dict(doc)
        parts = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)]
        chunks = self.keys.state_of(seq, self.tag)
        try:
            for i, part in enumerate(parts):
                self.client.put(self.keys.state_chunk(seq, i, self.tag), part)
        except EtcdError as exc:
            self._drop_orphans(chunks)
            raise _store_error(exc, "write the whole state") from exc
        head_doc = {"seq": seq, "base": seq, "chunks": len(parts), "tag": self.tag}
        head = encode(head_doc)
        states = self.keys.states
        ops = [put_op(self.keys.head, head),
               delete_op(states, chunks.encode()),                   # older (and lower)
               delete_op(prefix_end(chunks), prefix_end(states)),    # others' orphans
               delete_op(self.keys.changes, prefix_end(self.keys.changes))]
        try:
            res = self._txn(ops, _Unsure(head, None, state))
        except (StoreConflict, Fenced):
            self._drop_orphans(chunks)
            raise
        self.current, self.seq, self.base = state, seq, seq
        self._committed(res, head_doc)
        return seq

    def _txn(self, success: list[dict[str, Any]], unsure: _Unsure) -> TxnResult:
        """The commit: head unchanged since our read, and the fence. On failure the same
        txn reads the head and the fence's keys, to say why."""
        fence = self.fence()
        compares = [compare(self.keys.head, "MOD", self._head_rev or 0), *fence]
        failure = [range_op(self.keys.head), range_op(self.keys.owner),
                   *(range_op(unb64(c["key"])) for c in fence)]
        if unsure.change is not None:
            failure.append(range_op(unsure.change[0]))
        try:
            res = self.client.txn(compares, success, failure)
        except EtcdUnavailable as exc:
            self._unsure = unsure
            raise StoreUnavailable(f"etcd did not answer the commit of seq "
                                   f"{decode(unsure.head)['seq']} (it may have been "
                                   f"applied): {exc}") from exc
        except EtcdError as exc:
            raise _store_error(exc, "commit") from exc
        if res.succeeded:
            return res
        head = res.kvs(0)
        owner = res.kvs(1)
        if head and head[0].value == unsure.head and (unsure.change is None or any(
                kv.value == unsure.change[1] for kv in res.kvs(len(failure) - 1))):
            # Our own commit, landed by an earlier attempt of this request: the client
            # sends a txn again to another member after an ambiguous "timed out", and
            # the second attempt's compare sees the first one's head. It succeeded
            # (taking it for a conflict would drop the chunks the head now names).
            return TxnResult(True, head[0].mod_revision, [])
        for i, c in enumerate(fence):
            got = res.kvs(2 + i)
            if not _fence_holds(c, got[0] if got else None):
                raise Fenced(f"{self.keys.root}: not the owner any more "
                             f"({_owner_text(owner)}); the commit was refused")
        now = head[0].mod_revision if head else 0
        raise StoreConflict(f"{self.keys.head}: another writer committed since our read "
                            f"(head revision {now}, we read {self._head_rev}); reload")

    def _committed(self, res: TxnResult, head: dict[str, Any]) -> None:
        self._head_rev = res.revision      # the txn's revision is the head's mod revision
        self._head = head
        self.committed_at = time.time()

    def _prepare(self) -> None:
        """Before a commit: know the head (read it once if never read), and settle a
        commit whose answer never came."""
        if self._head_rev is None:
            self.load()
            return
        unsure, self._unsure = self._unsure, None
        if unsure is None:
            return
        try:
            _, kvs = self.client.range(self.keys.head)
            change = self.client.get(unsure.change[0]) if unsure.change else None
        except EtcdError as exc:
            self._unsure = unsure
            raise _store_error(exc, "find out whether the last commit landed") from exc
        head = kvs[0] if kvs else None
        landed = head is not None and head.value == unsure.head and (
            unsure.change is None or (change is not None and change.value == unsure.change[1]))
        if not landed:
            # Its chunks stay: a txn etcd never answered may still be applied later (a
            # proposal in the log of a leader on its way out), and until the head moves
            # its compare holds, so the chunks it names must exist when it does. Our
            # next txn moves the head (the late one then fails) and the next whole
            # state's txn deletes every other state, these included.
            # etcd is as we last read it (or moved: the next txn says so), and the state
            # we hold went ahead of it: the next commit must be a whole state
            self.current = None
            return
        doc = decode(unsure.head)
        if unsure.state is not None:
            self.current, self.base = unsure.state, int(doc["base"])
        assert head is not None
        self.seq, self._head, self._head_rev = int(doc["seq"]), doc, head.mod_revision
        self.committed_at = time.time()

    def _drop_orphans(self, chunk_prefix: str) -> None:
        """Best effort: the chunks of a whole state that never became the head."""
        # (if this fails too, the next whole state's txn deletes them)
        with contextlib.suppress(EtcdError):
            self.client.delete(chunk_prefix, prefix_end(chunk_prefix))


def _value(kvs: dict[str, KV], key: str) -> Any:
    kv = kvs.get(key)
    if kv is None:
        return None
    try:
        return decode(kv.value)
    except ValueError as exc:
        raise EtcdStoreError(f"{key}: not JSON ({exc})") from None


def _owner_text(owner: list[KV]) -> str:
    if not owner:
        return "the group has no owner now (its lease expired)"
    try:
        doc = decode(owner[0].value)
        return f"owned now by node {doc['node']!r} at epoch {doc['epoch']}"
    except (ValueError, KeyError, TypeError):
        return f"owner key holds {owner[0].value[:80]!r}"


def _store_error(exc: EtcdError, what: str) -> EtcdStoreError:
    if isinstance(exc, EtcdUnavailable):
        return StoreUnavailable(f"cannot {what}: {exc}")
    return EtcdStoreError(f"cannot {what}: {exc}")
