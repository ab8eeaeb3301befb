"""Journaled changes: a checkpoint is the last whole state plus the changes after it.

The claim that makes the front fast is that a change built from a call, its answer and a
narrow read-back equals what a full capture of the target would show. The live tests
check it after every call of a random stream, on the embedded target and on SPDK's
nvmf_tgt; the store tests check that the changes survive a reopen, a restart and damage.
"""
from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.recovery import changes
from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.journal import KIND_CHANGE, read_journal
from nvmf_phoenix.recovery.store import CheckpointStore
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import nvmf as rn

from nvmf_phoenix.model import DISCOVERY_NQN, Subsystem, TargetState
from tests.support import supervised
from tests.target_fixture import free_port
from tests.target_process import TARGET_KINDS, target_process
from tests.waiting import wait_for

P = "nqn.2016-06.io.phx:chg"
PSK = "NVMeTLSkey-1:01:MDAxMTIyMzM0NDU1NjY3Nzg4OTlhYWJiY2NkZGVlZmZwJEiQ:\n"


class Stream:
    """Random modelled calls that are valid for the model as it stands."""

    def __init__(self, seed: int, files: Path, ports: list[int]) -> None:
        self.r = random.Random(seed)
        self.files, self.ports, self.n = files, ports, 0

    def free_bdevs(self, m: TargetState) -> list[str]:
        used = {ns.bdev_name for s in m.subsystems.values() for ns in s.namespaces.values()}
        return [b for b in m.bdevs if b not in used]

    def next(self, m: TargetState) -> tuple[str, dict[str, Any]]:
        r, self.n = self.r, self.n + 1
        subs = [s for s in m.subsystems.values() if not s.is_discovery]
        free = self.free_bdevs(m)
        pick: list[tuple[str, dict[str, Any]]] = [self._bdev(), self._subsystem(),
                                                  self._key()]
        if m.keys:
            pick.append(("keyring_file_remove_key", {"name": r.choice(list(m.keys))}))
        if subs:
            pick.append(("nvmf_delete_subsystem", {"nqn": r.choice(subs).nqn}))
        if free:
            name = r.choice(free)
            kind = m.bdevs[name].kind
            pick.append((f"bdev_{kind}_delete", {"name": name}))
        for s in r.sample(subs, min(2, len(subs))):
            pick += self._on(s, free)
        return r.choice(pick)

    def _bdev(self) -> tuple[str, dict[str, Any]]:
        name = f"B{self.n}"
        if self.r.random() < 0.3:
            path = self.files / name
            path.write_bytes(b"\0" * (1 << 20))
            p: dict[str, Any] = {"name": name, "filename": str(path)}
            if self.r.random() < 0.5:
                p["block_size"] = 512
            return "bdev_aio_create", p
        p = {"name": name, "num_blocks": 256, "block_size": self.r.choice([512, 4096])}
        if self.r.random() < 0.3:
            p["uuid"] = f"0000{self.n:04d}-1111-4222-8333-444455556666"
        return self.r.choice(["bdev_malloc_create", "bdev_malloc_create", "bdev_null_create"]), p

    def _key(self) -> tuple[str, dict[str, Any]]:
        path = self.files / f"key{self.n}"
        path.write_text(PSK)
        path.chmod(0o600)
        return "keyring_file_add_key", {"name": f"key{self.n}", "path": str(path)}

    def _subsystem(self) -> tuple[str, dict[str, Any]]:
        p: dict[str, Any] = {"nqn": f"{P}{self.n}"}
        for key, value in (("serial_number", f"SN{self.n}"), ("model_number", "phx model"),
                           ("ana_reporting", True), ("max_namespaces", 8),
                           ("allow_any_host", True)):
            if self.r.random() < 0.4:
                p[key] = value
        return "nvmf_create_subsystem", p

    def _on(self, s: Subsystem, free: list[str]) -> list[tuple[str, dict[str, Any]]]:
        r, nqn = self.r, s.nqn
        addr = rn.listen_address("127.0.0.1", r.choice(self.ports))
        out: list[tuple[str, dict[str, Any]]] = [
            ("nvmf_subsystem_add_host", {"nqn": nqn, "host": f"nqn.2014-08.org.h:{self.n}"}),
            ("nvmf_subsystem_allow_any_host", {"nqn": nqn, "allow_any_host": r.random() < .5})]
        if s.hosts:
            out.append(("nvmf_subsystem_remove_host", {"nqn": nqn,
                                                       "host": r.choice(list(s.hosts))}))
        if free and len(s.namespaces) < s.max_namespaces:
            ns: dict[str, Any] = {"bdev_name": r.choice(free)}
            if r.random() < 0.3:
                ns["uuid"] = f"5555{self.n:04d}-6666-4777-8888-999900001111"
            if r.random() < 0.4:
                ns["no_auto_visible"] = True
            out.append(("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": ns}))
        if s.namespaces:
            out.append(("nvmf_subsystem_remove_ns", {"nqn": nqn,
                                                     "nsid": r.choice(list(s.namespaces))}))
        hidden = [n for n in s.namespaces.values() if n.no_auto_visible]
        if hidden:
            # Twice the weight: hidden namespaces are rare, and both calls must be
            # exercised whatever else the stream draws.
            ns_obj = r.choice(hidden)
            out += [("nvmf_ns_add_host", {"nqn": nqn, "nsid": ns_obj.nsid,
                                          "host": f"nqn.2014-08.org.h:{self.n % 4}"})] * 2
            if ns_obj.hosts:
                out += [("nvmf_ns_remove_host", {"nqn": nqn, "nsid": ns_obj.nsid,
                                                 "host": r.choice(ns_obj.hosts)})] * 2
        if addr["trsvcid"] not in {a.trsvcid for a in s.listeners}:
            out.append(("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": addr}))
        if s.listeners:
            have = r.choice(list(s.listeners)).to_dict()
            out.append(("nvmf_subsystem_remove_listener", {"nqn": nqn,
                                                           "listen_address": have}))
            if s.ana_reporting:
                p: dict[str, Any] = {"nqn": nqn, "listen_address": have, "ana_state": r.choice(
                    ["optimized", "non_optimized", "inaccessible"])}
                if s.namespaces and r.random() < 0.5:
                    p["anagrpid"] = r.choice([ns.anagrpid or 1 for ns in s.namespaces.values()])
                out.append(("nvmf_subsystem_listener_set_ana_state", p))
        return out


def _readback(c: RpcClient, method: str, params: Any, result: Any,
              model: TargetState) -> list[Any]:
    return [c.call(m, p) for m, p in changes.readback(method, params, result, model)]


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_journaled_changes_equal_a_full_capture(tmp_path: Path, kind: str) -> None:
    """After every call of a random stream: the model (built from changes only, each
    through its journal form) and a full capture of the target have the same
    configuration, identities exactly."""
    ports = [free_port() for _ in range(3)]
    stream = Stream(7, tmp_path, ports)
    applied = {m: 0 for m in changes.MODELLED}
    with target_process(tmp_path, kind=kind) as tp, RpcClient.connect(tp.sock) as c:
        rn.nvmf_create_transport(c, "TCP")
        model = capture_config(c)
        for _ in range(240):
            method, params = stream.next(model)
            assert changes.is_modelled(method, params, model), (method, params)
            try:
                result = c.call(method, params)
            except RpcError as err:   # e.g. a cntlid or namespace limit: nothing changed
                assert diff(model, capture_config(c), desired=True) == [], (method, err)
                continue
            ops = changes.ops_for(method, params, result,
                                  _readback(c, method, params, result, model), model)
            changes.apply(model, json.loads(json.dumps(ops)))
            applied[method] += 1
            assert diff(model, capture_config(c), desired=True) == [], (method, params)
    assert all(applied.values()), applied      # every modelled call was exercised


def _state() -> TargetState:
    st = TargetState.empty()
    st.subsystems[P] = Subsystem(nqn=P, serial_number="S1")
    return st


def _ops_add_host(host: str) -> list[changes.Op]:
    return [{"op": "host", "nqn": P, "host": host, "value": {"nqn": host}}]


def test_changes_apply_all_or_nothing() -> None:
    st = _state()
    bad = [*_ops_add_host("h1"), {"op": "ns", "nqn": "nqn.2016-06.io.phx:none", "nsid": 1,
                                  "value": {"nsid": 1, "bdev_name": "x"}}]
    with pytest.raises(changes.ModelMismatch):
        changes.apply(st, bad)
    assert st.subsystems[P].hosts == {}
    with pytest.raises(changes.ModelMismatch):
        changes.apply(st, [{"op": "ns", "nqn": DISCOVERY_NQN, "nsid": 1, "value": None}])
    assert not changes.is_modelled("nvmf_subsystem_add_host", {"nqn": "nope", "host": "h"}, st)
    assert not changes.is_modelled("nvmf_create_transport", {"trtype": "TCP"}, st)
    assert not changes.is_modelled("nvmf_create_subsystem", {"nqn": "x", "tgt_name": "t"}, st)


def _store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(str(tmp_path / "ckpt"), name="chg", region_dir=str(tmp_path / "shm"))


def test_store_replays_changes_after_the_whole_state(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save(_state())
    for i in range(5):
        store.record(i, _ops_add_host(f"h{i}"))
    want = store.current
    store.journal.sync()
    store.close()
    loaded = _store(tmp_path).load()
    assert loaded.state is not None and want is not None
    assert loaded.changes == 5 and "5 journaled changes replayed" in loaded.reason
    assert list(loaded.state.subsystems[P].hosts) == [f"h{i}" for i in range(5)]
    assert diff(want, loaded.state) == [] and loaded.problems == []


def test_many_changes_are_folded_into_a_whole_state(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import nvmf_phoenix.recovery.store as store_mod

    monkeypatch.setattr(store_mod, "MAX_CHANGES", 4)
    store = _store(tmp_path)
    store.save(_state())
    for i in range(10):
        store.record(i, _ops_add_host(f"h{i}"))
    assert store.pending == 2            # folded after the 4th and the 8th
    store.journal.sync()
    loaded = _store(tmp_path).load()
    assert loaded.changes == 2 and loaded.state is not None
    assert len(loaded.state.subsystems[P].hosts) == 10


def test_a_damaged_change_is_reported_not_hidden(tmp_path: Path) -> None:
    """Flip a byte in the middle change: replay stops before it (a state that existed)
    and the load says records after the whole state are missing."""
    store = _store(tmp_path)
    store.save(_state())
    for i in range(3):
        store.record(i, _ops_add_host(f"h{i}"))
    store.journal.sync()
    store.close()
    store.region.unlink()                # only the journal holds them now
    path = str(tmp_path / "ckpt" / "journal")
    recs = [r for r in read_journal(path).records if r.kind == KIND_CHANGE]
    data = bytearray(Path(path).read_bytes())
    at = data.find(recs[1].payload)
    data[at + 5] ^= 0x40
    Path(path).write_bytes(bytes(data))
    loaded = _store(tmp_path).load()
    assert loaded.state is not None
    assert sorted(loaded.state.subsystems[P].hosts) == ["h0"]
    assert any("missing (damaged)" in p for p in loaded.problems), loaded.problems


def test_a_change_that_does_not_fit_is_refused_and_nothing_written(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save(_state())
    seq = store.journal.last_seq
    with pytest.raises(changes.ModelMismatch):
        store.record(1, [{"op": "host", "nqn": "nqn.2016-06.io.phx:none", "host": "h",
                          "value": {"nqn": "h"}}])
    assert store.journal.last_seq == seq and store.pending == 0


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_front_journals_changes_and_a_restart_restores_them(tmp_path: Path, kind: str) -> None:
    """Through the supervisor: modelled calls are journaled as changes (no whole state),
    others as whole states; a SIGKILL restores exactly what was acknowledged."""
    pub = str(tmp_path / "public.sock")
    with supervised(tmp_path, kind=kind, drift_interval=3600) as sup, \
            RpcClient.connect(pub) as c:
        rn.nvmf_create_transport(c, "TCP")               # not modelled: a whole state
        c.call("bdev_malloc_create", {"name": "M0", "num_blocks": 64, "block_size": 512})
        rn.nvmf_create_subsystem(c, P, ana_reporting=True, max_namespaces=4)
        nsid = rn.nvmf_subsystem_add_ns(c, P, "M0")
        rn.nvmf_subsystem_add_host(c, P, "nqn.2014-08.org.h:1")
        c.call("bdev_malloc_create", {"name": "M1", "num_blocks": 64, "block_size": 512})
        rn.nvmf_subsystem_add_ns(c, P, "M1", nsid=2, no_auto_visible=True)
        rn.nvmf_ns_add_host(c, P, 2, "nqn.2014-08.org.h:1")
        rn.nvmf_ns_add_host(c, P, 2, "nqn.2014-08.org.h:2")
        addr = rn.listen_address("127.0.0.1", free_port())
        rn.nvmf_subsystem_add_listener(c, P, addr)
        c.call("nvmf_subsystem_listener_set_ana_state",
               {"nqn": P, "listen_address": addr, "ana_state": "inaccessible"})
        assert sup.front.stats["changes"] == 10 and sup.front.stats["whole"] == 1
        assert sup.store.pending == 10
        before = capture_config(c)
        assert sup.store.current is not None
        assert diff(sup.store.current, before, desired=True) == []
        assert sup.proc is not None
        sup.proc.send_signal(signal.SIGKILL)
        wait_for(lambda: sup.status.restarts == 1, 20, what="restart")
        assert sup.status.checkpoint["seq"] > 0
        after = capture_config(c)
    assert diff(before, after) == []
    assert nsid == 1 and after.subsystems[P].namespaces[1].uuid == \
        before.subsystems[P].namespaces[1].uuid
    assert after.subsystems[P].namespaces[2].hosts == ["nqn.2014-08.org.h:2",
                                                       "nqn.2014-08.org.h:1"]
    states = after.subsystems[P].listeners[next(iter(after.subsystems[P].listeners))]
    assert set(states.ana_states.values()) == {"inaccessible"}


def test_drift_check_folds_changes_into_a_whole_state(tmp_path: Path) -> None:
    pub = str(tmp_path / "public.sock")
    with supervised(tmp_path, drift_interval=0.2) as sup, RpcClient.connect(pub) as c:
        rn.nvmf_create_subsystem(c, P)
        assert sup.front.stats["changes"] == 1
        wait_for(lambda: sup.store.pending == 0, 10, what="changes folded")
        assert sup.store.current is not None and P in sup.store.current.subsystems
        assert os.path.getsize(sup.store.journal_path) > 0
